"""Where an ``add`` step paints: the placement region as a box.

For a relation to an anchor object the region has the anchor box's aspect ratio and
``size_fraction`` of its AREA (sides scaled by ``sqrt(size_fraction)``); ``box`` uses the given box
as is. With ``(ax0, ay0, ax1, ay1)`` the anchor's box, ``(w, h)`` the region's size and ``cx`` the
anchor box's horizontal centre:

* ``on``      -- centred on ``cx``, straddling the anchor's top edge (centre at ``ay0``): an object
  resting on the anchor's upper surface;
* ``above``   -- centred on ``cx``, bottom edge at ``ay0``;
* ``below``   -- centred on ``cx``, top edge at ``ay1``;
* ``left_of`` -- right edge at ``ax0``, bottom aligned with ``ay1`` (same ground);
* ``right_of``-- left edge at ``ax1``, bottom aligned with ``ay1``;
* ``near``    -- ``right_of`` or ``left_of``, whichever side has more room in the image.

The region is clipped to the image; a region entirely outside it is empty (the step is skipped).
"""

from __future__ import annotations

import math

import numpy as np

from cielr_core import masks as M
from cielr_core.plan import Placement

from .errors import EditingError


def placement_box(
    placement: Placement, anchor_box: tuple[float, float, float, float] | None, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The placement region ``(x0, y0, x1, y1)`` clipped to ``shape`` (H, W); may be empty."""
    rel = placement.relation
    if rel == "box":
        return M.rasterize_box(placement.box, shape)
    if anchor_box is None:
        raise EditingError(f"placement {rel!r} needs the box of object {placement.object_id}")
    ax0, ay0, ax1, ay1 = (float(v) for v in anchor_box)
    k = math.sqrt(placement.size_fraction)
    w, h = max(1.0, (ax1 - ax0) * k), max(1.0, (ay1 - ay0) * k)
    return M.rasterize_box(relative_box(rel, anchor_box, w, h, shape[1]), shape)


def relative_box(relation: str, anchor_box, w: float, h: float, width: int) -> tuple[float, float, float, float]:
    """A ``w`` x ``h`` box placed by ``relation`` to ``anchor_box`` (the rules above), unclipped
    (``width`` is the image's, for ``near``)."""
    ax0, ay0, ax1, ay1 = (float(v) for v in anchor_box)
    cx = (ax0 + ax1) / 2
    rel = relation
    if rel == "near":
        rel = "right_of" if (width - ax1) >= ax0 else "left_of"
    if rel == "on":
        return (cx - w / 2, ay0 - h / 2, cx + w / 2, ay0 + h / 2)
    if rel == "above":
        return (cx - w / 2, ay0 - h, cx + w / 2, ay0)
    if rel == "below":
        return (cx - w / 2, ay1, cx + w / 2, ay1 + h)
    if rel == "left_of":
        return (ax0 - w, ay1 - h, ax0, ay1)
    if rel == "right_of":
        return (ax1, ay1 - h, ax1 + w, ay1)
    raise EditingError(f"unknown placement relation {relation!r}")


def placement_mask(placement: Placement, anchor_box, shape: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = placement_box(placement, anchor_box, shape)
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m
