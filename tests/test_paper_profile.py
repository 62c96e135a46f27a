"""The ``paper`` profile: it loads, and the README's profile table lists exactly the settings in
which it differs from ``default`` (a new difference without a row, or a row for a setting that no
longer differs, fails)."""

from __future__ import annotations

import re
from pathlib import Path

from cielr_core.config import PROFILES, load_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _table_rows() -> set[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("| setting | `default` | `paper` |")
    rows = set()
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        first = line.split("|")[1]
        rows.update(re.findall(r"`([a-z0-9_.]+)`", first))
    return rows


def test_paper_profile_differences_are_exactly_the_readme_table():
    assert "paper" in PROFILES
    default = _flat(load_settings(profile="default").model_dump(mode="json"))
    paper = _flat(load_settings(profile="paper").model_dump(mode="json"))
    differ = {k for k in set(default) | set(paper) if default.get(k) != paper.get(k)} - {"profile"}
    assert differ == _table_rows()


def test_paper_profile_settings():
    s = load_settings(profile="paper")
    sam = s.perception.sam2
    assert (sam.points_per_side, sam.pred_iou_thresh, sam.stability_score_thresh, sam.stability_score_offset,
            sam.crop_n_layers, sam.crop_n_points_downscale_factor, sam.use_m2m) == (16, 0.7, 0.92, 0.7, 1, 2, True)
    assert s.perception.owlv2.model.id == "google/owlv2-large-patch14-ensemble"
    assert s.perception.match_rule == "mask" and s.perception.merge_rule == "touching"
    assert s.llm.backend == "openai" and s.editing.remove_backend == "lama" and s.editing.lama.dilate_px == 0
    # its own cache keys: nothing it computes is mistaken for a default-profile result
    assert s.perception.digest() != load_settings(profile="default").perception.digest()
