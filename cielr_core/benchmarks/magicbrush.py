"""MagicBrush test set, in the layout of its released ``test`` archive (ASSUMED, not verified
against a copy here, which this machine does not hold):

```
<folder>/
  edit_sessions.json         {"<img_id>": [{"input": "<img_id>-input.png",
                                            "mask": "<img_id>-mask1.png",
                                            "instruction": "...",
                                            "output": "<img_id>-output1.png"}, ...turns...], ...}
  local_descriptions.json    optional: {"<img_id>-output1.png": "caption of that output", ...}
  images/<img_id>/<files named in the sessions>
```

Every turn is one sample (MagicBrush's single-turn setting: each turn starts from the
ground-truth input of that turn): ``image_id`` is ``<img_id>-<turn>`` (1-based), ``image_uri``
the turn's input, ``mask_uri`` its mask, ``target_uri`` the ground-truth output (for L1, L2,
CLIP-I, DINO; write it into the manifest with ``to_manifest(rows, path,
extra_columns=["target_uri"])``), ``reference_text`` the output's local description when given.
The images are looked up under ``images/<img_id>/`` and, failing that, ``<folder>/`` itself.
MagicBrush masks are used as they are read (binarised ``> 127`` on luminance); whether the
published masks mark the edited region by value or by alpha has not been checked here.
Reported, not fatal: a turn without instruction, a file that does not exist.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cielr_core.benchmarks.common import BenchmarkRows, natural_key, safe_id


def load_magicbrush(path: str | os.PathLike) -> BenchmarkRows:
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    out = BenchmarkRows(benchmark="magicbrush", root=root)
    sessions_path = os.path.join(root, "edit_sessions.json")
    try:
        with open(sessions_path, encoding="utf-8") as f:
            sessions = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"MagicBrush: cannot read {sessions_path}: {e}") from e
    if not isinstance(sessions, dict):
        raise ValueError(f"MagicBrush: {sessions_path} must map image ids to lists of turns")  # noqa: TRY004 - bad data, not a caller's type error
    descriptions: dict[str, Any] = {}
    desc_path = os.path.join(root, "local_descriptions.json")
    if os.path.isfile(desc_path):
        try:
            with open(desc_path, encoding="utf-8") as f:
                descriptions = json.load(f) or {}
        except (OSError, json.JSONDecodeError) as e:
            out.reject("local_descriptions.json", f"unreadable, reference texts missing: {e}")

    def find(img_id: str, name: Any) -> str | None:
        if not isinstance(name, str) or not name:
            return None
        for cand in (os.path.join(root, "images", img_id, name), os.path.join(root, name)):
            if os.path.isfile(cand):
                return cand
        return None

    for img_id in sorted(sessions, key=natural_key):
        turns = sessions[img_id]
        if not isinstance(turns, list):
            out.reject(str(img_id), "session is not a list of turns", image_id=str(img_id))
            continue
        for t, turn in enumerate(turns, start=1):
            sid = safe_id(f"{img_id}-{t}")
            src = f"{img_id} turn {t}"
            if not isinstance(turn, dict):
                out.reject(src, "turn is not an object", image_id=sid)
                continue
            instruction = turn.get("instruction")
            if not isinstance(instruction, str) or not instruction.strip():
                out.reject(src, "no instruction", image_id=sid)
                continue
            paths = {k: find(str(img_id), turn.get(k)) for k in ("input", "mask", "output")}
            lacking = [f"{k} {turn.get(k)!r}" for k, v in paths.items() if v is None]
            if lacking:
                out.reject(src, "file(s) not found: " + ", ".join(lacking), image_id=sid)
                continue
            desc = descriptions.get(turn.get("output")) if isinstance(descriptions, dict) else None
            out.append({
                "image_id": sid,
                "image_uri": paths["input"],
                "instruction": instruction.strip(),
                "seed": None,
                "mask_uri": paths["mask"],
                "reference_text": desc if isinstance(desc, str) and desc.strip() else None,
                "target_uri": paths["output"],
                "session": str(img_id),
                "turn": t,
                "benchmark": "magicbrush",
            })
    return out
