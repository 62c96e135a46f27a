"""CIEBench (the CIELR paper's benchmark) as published: ``updated_data.json`` maps a sample id
("0".."85") to ``{"image path": "i/i.png", "instruction": str, "mask path": ["i/i_mask.png"],
"CLIP": [str], "notes"?/"note"?: str}``, paths relative to the JSON file's folder.

Quirks and how they are handled (nothing is silently fixed):

* masks are 8-bit with anti-aliased edges: binarised ``> 127`` when read
  (:func:`cielr_core.benchmarks.load_gt_mask`, :func:`cielr_core.metrics.binarize`);
* **sample 5**: the mask is 320x240 while the image is 796x597 (the same 4:3 aspect ratio). The
  sample is kept; its row records ``image_size``/``mask_size`` and a quirk note, and the mask is
  resized nearest-neighbour to the image's size where it is used (``load_gt_mask(uri, size)``,
  and :func:`cielr_core.metrics.evaluate_sample`, whose row then has ``gt_mask_resized=True``).
  A mask whose aspect ratio differs from its image's by more than 2% cannot be placed and is
  rejected;
* instruction typos ("reomve", "replease") are kept as published: they are part of the benchmark;
* ``"notes"`` and ``"note"`` are both read into ``notes``;
* ``"CLIP"`` is a list: the first text is ``reference_text``, all are in ``reference_texts``;
  several masks would be united by the reader, but the manifest has one ``mask_uri``: such an
  entry is rejected (none in the published data);
* **sample 4**: the CLIP text ("a white piece of paper") contradicts the instruction (recolour the
  keyboard red); kept as published, flagged in ``quirks``. Its CLIP score measures the published
  text, not the instruction.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cielr_core.benchmarks.common import BenchmarkRows, image_size, natural_key, safe_id

KNOWN_QUIRKS: dict[str, str] = {
    "4": "the CLIP reference text contradicts the instruction (kept as published)",
}
ASPECT_TOLERANCE = 0.02


def load_ciebench(path: str | os.PathLike) -> BenchmarkRows:
    """Rows of CIEBench from its folder (or its ``updated_data.json``). Each row: ``image_id``,
    ``image_uri``, ``instruction``, ``mask_uri``, ``reference_text``, ``reference_texts``,
    ``notes``, ``image_size``, ``mask_size`` (``[w, h]``), ``quirks`` (list of str), ``benchmark``."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    json_path = path if path.endswith(".json") else os.path.join(path, "updated_data.json")
    root = os.path.dirname(json_path)
    out = BenchmarkRows(benchmark="ciebench", root=root)
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"CIEBench: cannot read {json_path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"CIEBench: {json_path} must map sample ids to entries")  # noqa: TRY004 - bad data, not a caller's type error
    for key in sorted(data, key=natural_key):
        entry = data[key]
        row = _row(str(key), entry, root, out)
        if row is not None:
            out.append(row)
    return out


def _row(key: str, entry: Any, root: str, out: BenchmarkRows) -> dict[str, Any] | None:
    src = f"sample {key}"
    if not isinstance(entry, dict):
        out.reject(src, "entry is not an object", image_id=key)
        return None
    instruction = entry.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        out.reject(src, "no instruction", image_id=key)
        return None
    img_rel = entry.get("image path")
    if not isinstance(img_rel, str):
        out.reject(src, "no 'image path'", image_id=key)
        return None
    masks = entry.get("mask path")
    if isinstance(masks, str):
        masks = [masks]
    if not isinstance(masks, list) or not masks:
        out.reject(src, "no 'mask path'", image_id=key)
        return None
    if len(masks) > 1:
        out.reject(src, f"{len(masks)} masks; a manifest row holds one mask_uri", image_id=key)
        return None
    clip = entry.get("CLIP")
    if isinstance(clip, str):
        clip = [clip]
    texts = [t for t in (clip or []) if isinstance(t, str) and t.strip()]
    image_uri = os.path.normpath(os.path.join(root, img_rel))
    mask_uri = os.path.normpath(os.path.join(root, masks[0]))
    try:
        isize = image_size(image_uri)
    except OSError as e:
        out.reject(src, f"image unreadable: {e}", image_id=key)
        return None
    try:
        msize = image_size(mask_uri)
    except OSError as e:
        out.reject(src, f"mask unreadable: {e}", image_id=key)
        return None
    quirks: list[str] = []
    if key in KNOWN_QUIRKS:
        quirks.append(KNOWN_QUIRKS[key])
    if msize != isize:
        ar_i, ar_m = isize[0] / isize[1], msize[0] / msize[1]
        if abs(ar_i - ar_m) / ar_i > ASPECT_TOLERANCE:
            out.reject(src, f"mask {msize[0]}x{msize[1]} does not fit image {isize[0]}x{isize[1]} (aspect ratio)",
                       image_id=key)
            return None
        quirks.append(
            f"mask is {msize[0]}x{msize[1]}, image is {isize[0]}x{isize[1]}: mask resized nearest-neighbour "
            "to the image where used"
        )
    if not texts:
        quirks.append("no CLIP reference text: CLIP score missing")
    notes = entry.get("notes", entry.get("note"))
    return {
        "image_id": safe_id(key),
        "image_uri": image_uri,
        "instruction": instruction.strip(),
        "seed": None,
        "mask_uri": mask_uri,
        "reference_text": texts[0] if texts else None,
        "reference_texts": texts,
        "notes": notes if isinstance(notes, str) else None,
        "image_size": list(isize),
        "mask_size": list(msize),
        "quirks": quirks,
        "benchmark": "ciebench",
    }
