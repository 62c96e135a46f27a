"""Binary mask operations.

Coordinates: pixel (row r, col c) covers the square [c, c+1) x [r, r+1). Boxes are
``(x0, y0, x1, y1)`` in those continuous coordinates, end-exclusive, so a mask's bbox is
``(cmin, rmin, cmax + 1, rmax + 1)``. Centroids are the mean of pixel centres ``(c + 0.5, r + 0.5)``.
Detector boxes (floats) are rasterised by rounding their edges to the nearest pixel boundary.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]


def as_bool(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {m.shape}")
    return m if m.dtype == bool else m > 0


def area(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` end-exclusive, or None for an empty mask."""
    m = as_bool(mask)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """``(x, y)`` mean of pixel centres, or None for an empty mask."""
    m = as_bool(mask)
    rs, cs = np.nonzero(m)
    if rs.size == 0:
        return None
    return float(cs.mean() + 0.5), float(rs.mean() + 0.5)


def union(masks: Iterable[np.ndarray], shape: tuple[int, int] | None = None) -> np.ndarray:
    out = None
    for m in masks:
        m = as_bool(m)
        out = m.copy() if out is None else (out | m)
    if out is None:
        if shape is None:
            raise ValueError("union of no masks needs a shape")
        return np.zeros(shape, dtype=bool)
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = as_bool(a), as_bool(b)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    inter = np.count_nonzero(a & b)
    uni = np.count_nonzero(a | b)
    return float(inter / uni) if uni else 0.0


def rasterize_box(box: Sequence[float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer pixel extent ``(x0, y0, x1, y1)`` of a float box, clipped to ``shape`` (H, W)."""
    h, w = shape
    x0, y0, x1, y1 = (int(np.floor(v + 0.5)) for v in box)
    x0, x1 = max(0, min(w, x0)), max(0, min(w, x1))
    y0, y1 = max(0, min(h, y0)), max(0, min(h, y1))
    return x0, y0, max(x0, x1), max(y0, y1)


def box_mask(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = rasterize_box(box, shape)
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def mask_box_iou(mask: np.ndarray, box: Sequence[float]) -> float:
    """IoU between a mask and the filled rectangle of a box (pixels)."""
    m = as_bool(mask)
    x0, y0, x1, y1 = rasterize_box(box, m.shape)
    box_area = (x1 - x0) * (y1 - y0)
    inter = int(np.count_nonzero(m[y0:y1, x0:x1]))
    uni = area(m) + box_area - inter
    return float(inter / uni) if uni else 0.0


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix0, iy0 = max(a[0], b[0]), max(a[1], b[1])
    ix1, iy1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix1 - ix0) * max(0.0, iy1 - iy0)
    ua = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Dilate by ``px`` pixels (Chebyshev distance: a square structuring element)."""
    m = as_bool(mask)
    if px <= 0:
        return m.copy()
    k = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.dilate(m.astype(np.uint8), k) > 0


def adjacent(a: np.ndarray, b: np.ndarray, gap: int = 0) -> bool:
    """True if the masks overlap, touch (8-neighbours), or are separated by at most ``gap`` pixels.

    Formally: the smallest Chebyshev distance between a pixel of ``a`` and a pixel of ``b`` is at
    most ``gap + 1`` (0 = overlap, 1 = touching).
    """
    a, b = as_bool(a), as_bool(b)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    ba, bb = bbox(a), bbox(b)
    if ba is None or bb is None:
        return False
    reach = gap + 1
    # quick reject on boxes
    if ba[0] - reach >= bb[2] or bb[0] - reach >= ba[2] or ba[1] - reach >= bb[3] or bb[1] - reach >= ba[3]:
        return False
    h, w = a.shape
    x0, y0 = max(0, ba[0] - reach), max(0, ba[1] - reach)
    x1, y1 = min(w, ba[2] + reach), min(h, ba[3] + reach)
    grown = dilate(a[y0:y1, x0:x1], reach)
    return bool(np.any(grown & b[y0:y1, x0:x1]))


def median_in_mask(values: np.ndarray, mask: np.ndarray) -> float | None:
    m = as_bool(mask)
    if values.shape != m.shape:
        raise ValueError(f"value map {values.shape} and mask {m.shape} differ in shape")
    sel = values[m]
    if sel.size == 0:
        return None
    return float(np.median(sel))


# -- codec: a mask is a 1-bit PNG ---------------------------------------------------------------
def encode_mask_png(mask: np.ndarray) -> bytes:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {arr.shape}")
    im = Image.fromarray(arr.astype(bool)).convert("1") if arr.dtype == bool else Image.fromarray(arr > 0).convert("1")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_mask_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode == "1":
            return np.asarray(im, dtype=bool).copy()
        return np.asarray(im.convert("L")) > 127
