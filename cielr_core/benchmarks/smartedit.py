"""The SmartEdit reasoning evaluation set, from its folder layout:

```
<folder>/
  1.png  2.png  ...          the input images (any of .png .jpg .jpeg .webp .bmp)
  1_mask.jpg  2_mask.jpg ... the GT masks of the regions to edit (``<stem>_mask.jpg``)
  <anything>.txt             ONE text file, one line per image: ``<instruction> CLIP: <text>``
```

Assumed pairing of lines and images (the release does not name it explicitly): when every
image's stem is an integer, line ``k`` (0-based, counting every line, blank ones included, so a
bad line does not shift the rest) belongs to the image whose stem is ``k + first`` where ``first``
is the smallest stem (0 or 1, so both numberings work); otherwise line ``k`` belongs to the
``k``-th image in natural sort order. Trailing blank lines are ignored. The CLIP text is what
follows the LAST ``CLIP:`` of the line. Reported, not fatal: a line without ``CLIP:`` or an empty
instruction, a line without an image, an image without a line, an image without a mask.
Masks are JPEG (lossy): they are binarised ``> 127`` when read.
"""

from __future__ import annotations

import os
from typing import Any

from cielr_core.benchmarks.common import IMAGE_EXTS, BenchmarkRows, natural_key, safe_id

MASK_SUFFIX = "_mask"


def parse_line(line: str) -> tuple[str, str]:
    """``(instruction, clip_text)`` of one ``<instruction> CLIP: <text>`` line (``ValueError`` if
    it has no ``CLIP:`` or either part is empty)."""
    idx = line.rfind("CLIP:")
    if idx < 0:
        raise ValueError("no 'CLIP:' in the line")
    instruction, text = line[:idx].strip(), line[idx + len("CLIP:"):].strip()
    if not instruction:
        raise ValueError("empty instruction")
    if not text:
        raise ValueError("empty CLIP text")
    return instruction, text


def load_smartedit(path: str | os.PathLike) -> BenchmarkRows:
    """Rows of the SmartEdit reasoning set (see the module doc for the layout and pairing)."""
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    out = BenchmarkRows(benchmark="smartedit", root=root)
    if not os.path.isdir(root):
        raise ValueError(f"SmartEdit: {root} is not a folder")
    names = sorted(os.listdir(root), key=natural_key)
    texts = [n for n in names if n.lower().endswith(".txt") and os.path.isfile(os.path.join(root, n))]
    if len(texts) != 1:
        raise ValueError(f"SmartEdit: expected one .txt file of '<instruction> CLIP: <text>' lines in {root}, "
                         f"found {len(texts)}: {', '.join(texts) or 'none'}")
    images: dict[str, str] = {}
    masks: dict[str, str] = {}
    for n in names:
        stem, ext = os.path.splitext(n)
        if ext.lower() not in IMAGE_EXTS:
            continue
        if stem.endswith(MASK_SUFFIX):
            masks[stem[: -len(MASK_SUFFIX)]] = os.path.join(root, n)
        elif stem in images:
            out.reject(n, f"two images with stem {stem!r}; using {os.path.basename(images[stem])}")
        else:
            images[stem] = os.path.join(root, n)
    with open(os.path.join(root, texts[0]), encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()

    stems = sorted(images, key=natural_key)
    if stems and all(s.isdigit() for s in stems):
        first = min(int(s) for s in stems)
        by_num = {int(s): s for s in stems}
        pairs = [(k, by_num.get(k + first)) for k in range(len(lines))]
    else:
        pairs = [(k, stems[k] if k < len(stems) else None) for k in range(len(lines))]
    used: set[str] = set()
    for k, stem in pairs:
        src = f"{texts[0]} line {k + 1}"
        if stem is None:
            out.reject(src, "no image for this line")
            continue
        used.add(stem)
        try:
            instruction, clip_text = parse_line(lines[k])
        except ValueError as e:
            out.reject(src, f"{e}: {lines[k][:80]!r}", image_id=stem)
            continue
        if stem not in masks:
            out.reject(src, f"no mask {stem}{MASK_SUFFIX}.jpg for image {os.path.basename(images[stem])}",
                       image_id=stem)
            continue
        out.append(_row(stem, images[stem], masks[stem], instruction, clip_text, k + 1))
    for stem in stems:
        if stem not in used:
            out.reject(os.path.basename(images[stem]), "image without an instruction line", image_id=stem)
    return out


def _row(stem: str, image: str, mask: str, instruction: str, clip_text: str, line_no: int) -> dict[str, Any]:
    return {
        "image_id": safe_id(stem),
        "image_uri": image,
        "instruction": instruction,
        "seed": None,
        "mask_uri": mask,
        "reference_text": clip_text,
        "line": line_no,
        "benchmark": "smartedit",
    }
