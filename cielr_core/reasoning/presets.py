"""Segmentation presets the assessment can ask for: ``finer`` / ``coarser`` move one step per request.

The scene remembers how far it has moved (``provenance["segmentation_level"]``: 0 = the config's
own SAM2 settings, +k = k steps finer, -k = k steps coarser), so asking for "finer" twice gives a
finer segmentation the second time than the first, and a bound (``reasoning.max_segmentation_steps``)
stops the walk. One step finer doubles the point grid and lowers the predicted-IoU and stability
thresholds by 0.1 and 0.05; one step coarser halves the grid (at least 2 points a side) and raises
them by 0.1 and 0.03 (clipped to [0, 1]); a level is those steps applied from the config in turn.
"""

from __future__ import annotations

from typing import Any

LEVEL_KEY = "segmentation_level"
MAX_POINTS_PER_SIDE = 256


def _finer(p: dict[str, Any]) -> dict[str, Any]:
    return {"points_per_side": min(MAX_POINTS_PER_SIDE, p["points_per_side"] * 2),
            "pred_iou_thresh": round(max(0.0, p["pred_iou_thresh"] - 0.1), 4),
            "stability_score_thresh": round(max(0.0, p["stability_score_thresh"] - 0.05), 4)}


def _coarser(p: dict[str, Any]) -> dict[str, Any]:
    return {"points_per_side": max(2, p["points_per_side"] // 2),
            "pred_iou_thresh": round(min(1.0, p["pred_iou_thresh"] + 0.1), 4),
            "stability_score_thresh": round(min(1.0, p["stability_score_thresh"] + 0.03), 4)}


def overrides_for_level(sam2_cfg: Any, level: int) -> dict[str, Any]:
    """The SAM2 generator overrides of ``level`` (at level 0 the config's own values, spelled out:
    a move back to them still re-segments)."""
    p = {"points_per_side": int(sam2_cfg.points_per_side), "pred_iou_thresh": float(sam2_cfg.pred_iou_thresh),
         "stability_score_thresh": float(sam2_cfg.stability_score_thresh)}
    step = _finer if level > 0 else _coarser
    for _ in range(abs(level)):
        p = step(p)
    return p


def current_level(provenance: dict[str, Any] | None) -> int:
    try:
        return int((provenance or {}).get(LEVEL_KEY, 0))
    except (TypeError, ValueError):
        return 0


def next_level(level: int, request: str, max_steps: int) -> int | None:
    """The level one step further in ``request``'s direction (``finer`` / ``coarser``), or None when
    the request is ``keep`` or the bound ``max_steps`` is reached."""
    if request == "finer":
        nxt = level + 1
    elif request == "coarser":
        nxt = level - 1
    else:
        return None
    return nxt if abs(nxt) <= max(0, int(max_steps)) else None
