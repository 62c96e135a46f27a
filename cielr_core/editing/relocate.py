"""``move`` and ``resize``: cut the object by its mask, paste it (scaled) at the target, fill the hole.

Geometry (boxes are ``(x0, y0, x1, y1)`` pixel edges, end-exclusive, as in :mod:`cielr_core.masks`):

* ``resize`` by ``scale`` about ``anchor``: the object's box becomes ``round(w * scale)`` x
  ``round(h * scale)`` with the anchor point of the box fixed (``center``, the middle of an edge
  -- ``bottom`` keeps an object standing on the ground -- or a corner);
* ``move`` to a placement relative to another object: the object keeps its size and its box is
  placed by the same rules as an ``add`` region (:mod:`.placement`: ``on`` straddles the anchor's
  top edge, ``left_of`` / ``right_of`` share the anchor's bottom line, ...); ``move`` to a ``box``:
  the object is fitted into the box (uniform scale, centred).

Box corners are rounded to whole pixels, so a move is a pure integer translation (the pasted pixels
are the object's own, exactly). The object's pixels and mask are cropped at its box, resized to the
new box (area averaging to shrink, bilinear to enlarge; colour premultiplied by the mask so no
background bleeds into the edge), and blended in with the resized mask as alpha, feathered over
``feather_px`` pixels inside the pasted mask's edge. Before the paste the object's old region is
filled by the removal inpainter (the same as ``remove`` uses; dilated as a removal is). The changed
region is the filled (dilated) old mask plus the pasted support; every other pixel is the input's.

Shadows, reflections and contact marks are separate pixels from the object's mask: they are not
moved (they stay where they were, unless the dilated fill covers them).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from cielr_core import masks as M

from .errors import EditingError
from .placement import relative_box

Box = tuple[int, int, int, int]

ANCHORS = ("center", "bottom", "top", "left", "right", "bottom_left", "bottom_right", "top_left", "top_right")


def _round(v: float) -> int:
    return math.floor(v + 0.5)


def anchor_fractions(anchor: str) -> tuple[float, float]:
    """(fx, fy): where the anchor lies in the box, as fractions of its width and height."""
    fx = 0.0 if "left" in anchor else 1.0 if "right" in anchor else 0.5
    fy = 0.0 if "top" in anchor else 1.0 if "bottom" in anchor else 0.5
    if anchor not in ANCHORS:
        raise EditingError(f"unknown resize anchor {anchor!r}; use one of {', '.join(ANCHORS)}")
    return fx, fy


def resize_box(obj_box: Box, scale: float, anchor: str = "center") -> Box:
    """The object's box scaled by ``scale`` about ``anchor`` (whole pixels, at least 1 x 1)."""
    if not scale > 0:
        raise EditingError(f"resize needs a positive scale, got {scale}")
    x0, y0, x1, y1 = obj_box
    w, h = x1 - x0, y1 - y0
    nw, nh = max(1, _round(w * scale)), max(1, _round(h * scale))
    fx, fy = anchor_fractions(anchor)
    ax, ay = x0 + fx * w, y0 + fy * h
    nx0, ny0 = _round(ax - fx * nw), _round(ay - fy * nh)
    return nx0, ny0, nx0 + nw, ny0 + nh


def move_box(obj_box: Box, placement, anchor_box, shape: tuple[int, int]) -> Box:
    """Where a ``move`` puts the object's box (may reach outside the image)."""
    x0, y0, x1, y1 = obj_box
    w, h = x1 - x0, y1 - y0
    if placement.relation == "box":
        bx0, by0, bx1, by1 = (float(v) for v in placement.box)
        if bx1 <= bx0 or by1 <= by0:
            raise EditingError(f"move: the target box {placement.box} is empty")
        s = min((bx1 - bx0) / w, (by1 - by0) / h)
        nw, nh = max(1, _round(w * s)), max(1, _round(h * s))
        nx0, ny0 = _round((bx0 + bx1) / 2 - nw / 2), _round((by0 + by1) / 2 - nh / 2)
        return nx0, ny0, nx0 + nw, ny0 + nh
    if anchor_box is None:
        raise EditingError(f"move to {placement.relation!r} needs the box of object {placement.object_id}")
    fx0, fy0, _, _ = relative_box(placement.relation, anchor_box, float(w), float(h), shape[1])
    nx0, ny0 = _round(fx0), _round(fy0)
    return nx0, ny0, nx0 + w, ny0 + h


def cut_and_scale(rgb: np.ndarray, obj: np.ndarray, dst: Box) -> tuple[np.ndarray, np.ndarray]:
    """The object's pixels and its mask (as alpha in [0, 1]) resized from its box to ``dst``'s size."""
    x0, y0, x1, y1 = M.bbox(obj)
    crop = rgb[y0:y1, x0:x1].astype(np.float32)
    a = obj[y0:y1, x0:x1].astype(np.float32)
    nw, nh = dst[2] - dst[0], dst[3] - dst[1]
    if (nw, nh) == (x1 - x0, y1 - y0):
        return crop, a
    interp = cv2.INTER_AREA if nw * nh < crop.shape[0] * crop.shape[1] else cv2.INTER_LINEAR
    pre = cv2.resize(crop * a[..., None], (nw, nh), interpolation=interp)
    alpha = np.clip(cv2.resize(a, (nw, nh), interpolation=interp), 0.0, 1.0)
    color = np.where(alpha[..., None] > 1e-6, pre / np.maximum(alpha[..., None], 1e-6), 0.0)
    return np.clip(color, 0.0, 255.0), alpha


def feathered(alpha: np.ndarray, feather_px: int) -> np.ndarray:
    """``alpha`` ramped down over ``feather_px`` pixels inside the edge of its support (0 = as is)."""
    if feather_px <= 0:
        return alpha
    hard = (alpha > 0.5).astype(np.uint8)
    padded = np.pad(hard, 1)  # the crop's own border is an edge too
    d = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return alpha * np.clip(d / float(feather_px + 1), 0.0, 1.0).astype(np.float32)


def paste(base: np.ndarray, color: np.ndarray, alpha: np.ndarray, dst: Box) -> tuple[np.ndarray, np.ndarray]:
    """``base`` with ``color`` blended in at ``dst`` by ``alpha`` (clipped to the image); returns the
    image and the HxW float alpha actually applied (0 where nothing was pasted)."""
    H, W = base.shape[:2]
    x0, y0, x1, y1 = dst
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    full = np.zeros((H, W), np.float32)
    out = base.copy()
    if cx0 >= cx1 or cy0 >= cy1:
        return out, full
    c = color[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    a = alpha[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    region = base[cy0:cy1, cx0:cx1].astype(np.float32)
    blended = np.clip(np.rint(region * (1.0 - a[..., None]) + c * a[..., None]), 0, 255).astype(np.uint8)
    keep = a <= 0
    blended[keep] = base[cy0:cy1, cx0:cx1][keep]
    out[cy0:cy1, cx0:cx1] = blended
    full[cy0:cy1, cx0:cx1] = a
    return out, full
