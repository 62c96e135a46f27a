"""Mask preparation and compositing: dilation, the crop around a mask, feathered pasting.

Geometry follows :mod:`cielr_core.masks`: boxes are ``(x0, y0, x1, y1)`` pixel edges, end-exclusive.

The contract kept here: the composite differs from the input ONLY inside the dilated mask. The
feather ramps the blend weight from ~0 at the dilated mask's edge up to 1 ``feather_px`` pixels
inside it (and is 1 on the undilated mask itself), so the seam is soft but every pixel outside the
dilated mask is the input's own value, bit for bit. The image border is not a seam: a mask that
touches the border keeps full weight there.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from cielr_core import images
from cielr_core import masks as M

from .errors import EditingError

Box = tuple[int, int, int, int]


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    return images.check_rgb(rgb, error=EditingError)


def check_mask_size(mask: np.ndarray, shape: tuple[int, ...], what: str = "mask") -> np.ndarray:
    """The mask as bool; an EditingError naming both sizes (W x H) when it does not match ``shape``."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise EditingError(f"the {what} must be 2-D, got shape {m.shape}")
    h, w = shape[:2]
    if m.shape != (h, w):
        raise EditingError(
            f"the {what} is {m.shape[1]}x{m.shape[0]} (WxH) but the image is {w}x{h}; "
            "masks must have the image's size (re-run perception on this image)"
        )
    return M.as_bool(m)


def crop_box(mask: np.ndarray, margin: float, min_side: int = 0) -> Box | None:
    """A square-as-possible window around ``mask`` (None when the mask is empty).

    The mask's box grows by ``margin * max(w, h)`` on every side, becomes a square of side
    ``max(grown side, min_side)`` centred on the mask, is shifted (not shrunk) to lie inside the
    image where it fits, and is clipped to the image where it does not. It always contains the
    whole mask.
    """
    m = M.as_bool(mask)
    b = M.bbox(m)
    if b is None:
        return None
    H, W = m.shape
    bx0, by0, bx1, by1 = b
    pad = math.ceil(max(0.0, margin) * max(bx1 - bx0, by1 - by0))
    side = max(bx1 - bx0 + 2 * pad, by1 - by0 + 2 * pad, int(min_side))

    def place(lo: int, hi: int, size: int) -> tuple[int, int]:
        if side >= size:
            return 0, size
        start = (lo + hi - side) // 2
        start = min(max(start, 0), size - side)
        start = min(start, lo)  # keep the mask inside (rounding safety)
        end = max(start + side, hi)
        return start, min(end, size)

    x0, x1 = place(bx0, bx1, W)
    y0, y1 = place(by0, by1, H)
    assert x0 <= bx0 and y0 <= by0 and x1 >= bx1 and y1 >= by1
    return x0, y0, x1, y1


def model_size(width: int, height: int, resolution: int, multiple: int = 8) -> tuple[int, int]:
    """(w, h) for a model working at ``resolution``: the long side becomes ``resolution``, the aspect
    ratio is kept, and each side is rounded to a multiple of ``multiple`` (at least one multiple)."""
    scale = resolution / max(width, height)

    def r(v: int) -> int:
        return max(multiple, round(v * scale / multiple) * multiple)

    return r(width), r(height)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if (rgb.shape[1], rgb.shape[0]) == (w, h):
        return rgb.copy()
    shrinking = w * h < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask conservatively: a target pixel is in when any covered source pixel is."""
    w, h = size
    m = M.as_bool(mask)
    if (m.shape[1], m.shape[0]) == (w, h):
        return m.copy()
    return cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 1e-6


def feather_alpha(dilated: np.ndarray, core: np.ndarray, feather_px: int, box: Box | None = None) -> np.ndarray:
    """Blend weights in [0, 1] over ``box`` (default: the whole image) for pasting an inpainted region.

    0 outside ``dilated``; inside, ``min(1, d / (feather_px + 1))`` with ``d`` the Euclidean distance
    to the nearest pixel outside ``dilated`` (the image border does not count as outside); 1 on
    ``core`` (the undilated mask) regardless.
    """
    dil, cor = M.as_bool(dilated), M.as_bool(core)
    H, W = dil.shape
    x0, y0, x1, y1 = box if box is not None else (0, 0, W, H)
    if feather_px <= 0:
        return (dil[y0:y1, x0:x1]).astype(np.float32)
    # distances inside the box depend on pixels up to feather_px + 1 beyond it
    reach = feather_px + 2
    wx0, wy0, wx1, wy1 = max(0, x0 - reach), max(0, y0 - reach), min(W, x1 + reach), min(H, y1 + reach)
    window = dil[wy0:wy1, wx0:wx1].astype(np.uint8)
    # pixels of the window that are not at the image border but at the window's edge: pad with the
    # true neighbours is already done by `reach`; OpenCV treats outside-the-array as "inside".
    d = cv2.distanceTransform(window, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    a = np.clip(d / float(feather_px + 1), 0.0, 1.0)
    a = a[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
    a[cor[y0:y1, x0:x1]] = 1.0
    a[~dil[y0:y1, x0:x1]] = 0.0
    return a.astype(np.float32)


def composite(base: np.ndarray, patch: np.ndarray, alpha: np.ndarray, box: Box, allowed: np.ndarray) -> np.ndarray:
    """``base`` with ``patch`` blended in over ``box`` by ``alpha``; pixels outside ``allowed`` (the
    dilated mask) are copied from ``base`` exactly."""
    x0, y0, x1, y1 = box
    out = base.copy()
    region = base[y0:y1, x0:x1].astype(np.float32)
    if patch.shape != region.shape:
        raise EditingError(f"inpainted patch is {patch.shape[1]}x{patch.shape[0]}, expected {x1 - x0}x{y1 - y0}")
    a = alpha[..., None]
    blended = np.rint(region * (1.0 - a) + patch.astype(np.float32) * a)
    blended = np.clip(blended, 0, 255).astype(np.uint8)
    keep = ~M.as_bool(allowed)[y0:y1, x0:x1]
    blended[keep] = base[y0:y1, x0:x1][keep]
    out[y0:y1, x0:x1] = blended
    return out
