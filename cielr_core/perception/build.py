"""From masks + detections + depth to an SSR: matching, merging, depth medians, ids.

Rules (exact, tested on synthetic masks):

* **Match**: each mask takes the label and score of the detection whose box has the highest
  mask/box IoU (:func:`cielr_core.masks.mask_box_iou`), if that IoU is at least
  ``match_min_iou``; otherwise ``unknown`` with score 0. Ties go to the higher detector score,
  then the earlier detection.
* **Merge**: masks with the same (known) label that overlap or touch within ``merge_gap_px``
  (:func:`cielr_core.masks.adjacent`) are unioned, transitively (connected components). Apart
  ones stay separate objects. ``unknown`` masks are never merged (they share no evidence of being
  one thing). A merged object's score and mask_score are the maxima of its parts.
* **Depth**: the MEDIAN of the raw depth map inside each object's mask, normalised per image as
  ``(median - min) / (max - min)`` over the whole map's finite values, so 1 = the nearest pixel of
  the image, 0 = the farthest. (Median commutes with that monotone map, so this equals the median
  of the normalised map.) A constant map carries no depth contrast: every object gets 0.5.
* **Ids**: objects are numbered 0.. by area, largest first (ties: top-most, then left-most).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from cielr_core import masks as M
from cielr_core.perception.results import Detections, SegmentResult
from cielr_core.relations import has_builtin, refresh_builtin, strip_builtin
from cielr_core.ssr import SSR, UNKNOWN, Scene, make_object


def box_ious(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one mask with each box's filled rectangle, exactly as
    :func:`cielr_core.masks.mask_box_iou` (same rasterisation), via one integral image: O(H*W) once
    per mask, then O(1) per box."""
    m = M.as_bool(mask)
    h, w = m.shape
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.float64)
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = m.cumsum(0, dtype=np.int64).cumsum(1)
    area = int(integral[h, w])
    ext = np.array([M.rasterize_box(b, (h, w)) for b in boxes], dtype=np.int64).reshape(-1, 4)
    x0, y0, x1, y1 = ext.T
    inter = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    union = area + (x1 - x0) * (y1 - y0) - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_labels(masks: Sequence[np.ndarray], det: Detections, min_iou: float) -> list[tuple[str, float, float]]:
    """Per mask: (label, detector score, the IoU that decided it)."""
    out: list[tuple[str, float, float]] = []
    for m in masks:
        ious = box_ious(m, det.boxes)
        best: tuple[float, float, int] | None = None  # (iou, score, -index)
        for j in range(len(det)):
            cand = (float(ious[j]), float(det.scores[j]), -j)
            if best is None or cand > best:
                best = cand
        if best is not None and best[0] >= min_iou and best[0] > 0:
            j = -best[2]
            out.append((det.labels[j], float(det.scores[j]), best[0]))
        else:
            out.append((UNKNOWN, 0.0, 0.0 if best is None else best[0]))
    return out


def merge_groups(masks: Sequence[np.ndarray], labels: Sequence[str], gap: int) -> list[list[int]]:
    """Connected components of same-label masks that overlap or touch within ``gap`` px.

    Returns groups of mask indices, each sorted, in order of their smallest index."""
    n = len(masks)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        if labels[i] == UNKNOWN:
            continue
        for j in range(i + 1, n):
            if labels[j] != labels[i] or find(i) == find(j):
                continue
            if M.adjacent(masks[i], masks[j], gap):
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def normalised_median_depth(depth: np.ndarray, masks: Sequence[np.ndarray]) -> list[float | None]:
    """Per mask, the median raw depth inside it normalised per image to [0, 1] (1 = nearest)."""
    d = np.asarray(depth, dtype=np.float64)
    finite = d[np.isfinite(d)]
    if finite.size == 0:
        return [None for _ in masks]
    lo, hi = float(finite.min()), float(finite.max())
    out: list[float | None] = []
    for m in masks:
        mm = M.as_bool(m) & np.isfinite(d)
        med = M.median_in_mask(d, mm)
        if med is None:
            out.append(None)
        elif hi <= lo:
            out.append(0.5)
        else:
            out.append(float(min(1.0, max(0.0, (med - lo) / (hi - lo)))))
    return out


def _order_key(m: np.ndarray) -> tuple[int, int, int]:
    box = M.bbox(m)
    assert box is not None
    return (-M.area(m), box[1], box[0])


def _resize_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim == 3 and d.shape[0] == 1:
        d = d[0]
    if d.shape != (height, width):
        import cv2

        d = cv2.resize(d, (width, height), interpolation=cv2.INTER_LINEAR)
    return d


def assemble(
    seg: SegmentResult,
    det: Detections,
    depth: np.ndarray | None,
    *,
    image_sha256: str,
    width: int,
    height: int,
    version: int = 0,
    provenance: dict[str, Any] | None = None,
    match_min_iou: float = 0.3,
    merge_gap_px: int = 2,
    min_object_area: int = 1,
) -> Scene:
    if len(seg) and seg.shape != (height, width):
        raise ValueError(f"masks are {seg.shape[1]}x{seg.shape[0]} but the image is {width}x{height}")
    raw = [(seg.masks[i], float(seg.scores[i])) for i in range(len(seg)) if M.area(seg.masks[i]) >= max(1, min_object_area)]
    mask_list = [m for m, _ in raw]
    matches = match_labels(mask_list, det, match_min_iou)
    labels = [lab for lab, _, _ in matches]
    groups = merge_groups(mask_list, labels, merge_gap_px)
    merged: list[dict[str, Any]] = []
    for g in groups:
        merged.append(
            {
                "mask": M.union(mask_list[i] for i in g),
                "label": labels[g[0]],
                "score": max(matches[i][1] for i in g),
                "mask_score": max(raw[i][1] for i in g),
                "parts": len(g),
            }
        )
    merged.sort(key=lambda o: _order_key(o["mask"]))
    depths = (
        normalised_median_depth(_resize_depth(depth, height, width), [o["mask"] for o in merged])
        if depth is not None
        else [None] * len(merged)
    )
    objects, masks = {}, {}
    for oid, (o, dep) in enumerate(zip(merged, depths)):
        attrs = {"merged_from": o["parts"]} if o["parts"] > 1 else {}
        objects[oid] = make_object(oid, o["mask"], label=o["label"], score=o["score"], depth=dep,
                                   mask_score=o["mask_score"], attributes=attrs)
        masks[oid] = o["mask"]
    ssr = SSR(image_sha256=image_sha256, width=width, height=height, version=version,
              provenance=dict(provenance or {}), objects=objects)
    return Scene(ssr=ssr, masks=masks)


def mask_digest(mask: np.ndarray) -> str:
    m = np.ascontiguousarray(M.as_bool(mask))
    return hashlib.sha256(f"{m.shape}".encode() + np.packbits(m).tobytes()).hexdigest()


def carry_ids(old: Scene, new: Scene, *, version: int) -> Scene:
    """Renumber ``new`` so that every object whose mask is identical to an old object's keeps that
    object's id (and its attributes, which spatial code derived from the unchanged mask; the
    label may have been refined). Other objects get fresh ids above every old id.

    Built-in relations are never carried: they depend on every object's label, position and size
    (``label_count``, ``x_rank_in_label``, ``nearest_object``, ...), so they are dropped and, when
    the old scene had them, recomputed for the new scene (:func:`cielr_core.relations.refresh_builtin`)."""

    old_by_mask: dict[str, int] = {}
    for oid in old.ssr.ids:
        old_by_mask.setdefault(mask_digest(old.masks[oid]), oid)
    next_id = (max(old.ssr.ids) + 1) if old.ssr.objects else 0
    objects, masks = {}, {}
    used: set[int] = set()
    for nid in new.ssr.ids:
        obj = new.ssr.objects[nid]
        m = new.masks[nid]
        oid = old_by_mask.get(mask_digest(m))
        attrs = strip_builtin(obj.attributes)
        if oid is not None and oid not in used:
            attrs = {**strip_builtin(old.ssr.objects[oid].attributes), **attrs}
        else:
            oid = next_id
            next_id += 1
        used.add(oid)
        objects[oid] = make_object(oid, m, label=obj.label, score=obj.score, depth=obj.depth,
                                   mask_score=obj.mask_score, attributes=attrs)
        masks[oid] = m
    ssr = new.ssr.model_copy(update={"objects": objects, "version": version})
    ssr = SSR.model_validate(ssr.model_dump())
    return refresh_builtin(Scene(ssr=ssr, masks=masks), compute=has_builtin(old.ssr))
