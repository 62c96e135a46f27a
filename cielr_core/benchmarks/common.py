"""What every benchmark loader shares: the row list with its rejected entries, the Parquet
manifest writer and the GT-mask reader.

A loader returns :class:`BenchmarkRows`: a list of row dicts (``image_id``, ``image_uri``,
``instruction``, ``mask_uri``, ``reference_text`` and benchmark-specific extras) plus
``rejected`` (one dict per bad entry, with ``source`` and ``error``) — a bad entry is reported,
never fatal. URIs are absolute local paths; ``root`` is the benchmark folder (add it to
``limits.allowed_input_roots`` when the manifest is written elsewhere).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image

from cielr_core.manifest import write_manifest as to_manifest  # noqa: F401 - the benchmarks' writer
from cielr_core.metrics.pixel import fit_mask

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


class BenchmarkRows(list):
    """Rows of one benchmark (a ``list`` of dicts) with the entries that could not be used."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), *, benchmark: str = "", root: str = "",
                 rejected: list[dict[str, Any]] | None = None):
        super().__init__(rows)
        self.benchmark = benchmark
        self.root = root
        self.rejected: list[dict[str, Any]] = list(rejected or [])

    def reject(self, source: str, error: str, **extra: Any) -> None:
        self.rejected.append({"source": source, "error": error, **extra})

    def summary(self) -> str:
        s = f"{self.benchmark}: {len(self)} samples"
        if self.rejected:
            s += f", {len(self.rejected)} rejected: " + "; ".join(f"{r['source']}: {r['error']}" for r in self.rejected[:5])
            if len(self.rejected) > 5:
                s += f" (+{len(self.rejected) - 5} more)"
        return s


def safe_id(text: str) -> str:
    """An id that the manifest accepts (letters, digits, ``._-``; starts with a letter or digit)."""
    s = _SAFE_ID.sub("-", str(text)).strip("-._")[:128]
    return s or "x"


def image_size(path: str) -> tuple[int, int]:
    """``(width, height)`` from the file header (raises ``OSError`` for an unreadable file)."""
    with Image.open(path) as im:
        return im.size


MAX_MASK_BYTES = 100 * 1024 * 1024


def load_gt_mask(uri: str | bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """A GT mask as bool, binarised ``> 127`` (8-bit masks with anti-aliased edges; RGB/RGBA masks
    use their luminance), from a local path or the encoded bytes. With ``size = (width, height)``
    a mask stored at another size is resized nearest-neighbour to it (CIEBench sample 5)."""
    if isinstance(uri, (bytes, bytearray)):
        src = io.BytesIO(uri)
    else:  # a regular file only (no FIFO or device is opened), of a bounded size
        from cielr_core.files import read_regular_file

        src = io.BytesIO(read_regular_file(os.path.expanduser(uri), max_bytes=MAX_MASK_BYTES))
    with Image.open(src) as im:
        m = np.asarray(im.convert("L"))
    if size is None:
        return m > 127
    return fit_mask(m, (size[1], size[0]))


def natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]
