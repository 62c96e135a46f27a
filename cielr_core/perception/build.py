"""From masks + detections + depth to an SSR: matching, merging, depth medians, ids.

Rules (exact, tested on synthetic masks):

* **Match** (``match_rule="box"``, the default): a mask may take a detection's label when the
  mask's OWN bounding box overlaps the detection box with IoU >= ``match_min_iou`` and at least
  ``match_min_coverage`` of the mask's pixels lie inside the detection box. Box against box fits
  thin, diagonal and non-convex objects (a knife, a bat, a bicycle): their masks fill a small part
  of their box, so a mask/box pixel IoU leaves them ``unknown``. Among eligible detections the
  highest box IoU wins, ties to the higher detector score, then the earlier detection.
  ``match_rule="mask"`` is the earlier rule: the pixel IoU of the mask with the box's filled
  rectangle (:func:`cielr_core.masks.mask_box_iou`), no coverage condition. No eligible
  detection: ``unknown`` with score 0.
* **Label candidates**: every eligible detection contributes its top-k labels (OWLv2's best
  queries on that patch, with scores); per label the best score, sorted by score, the first
  ``label_candidates`` kept on the object, so a refined query that lost to another word on the
  same patch is still seen.
* **Merge**: only fragments of ONE instance are unioned: masks with the same (known) label that
  were matched to the SAME detection and overlap or touch within ``merge_gap_px``
  (:func:`cielr_core.masks.adjacent`), or of which one lies at least ``merge_inside_fraction``
  inside the other; transitively. Separate instances stay apart even when they touch (a pile of
  oranges is several oranges, each with its own box). ``unknown`` masks are never merged. A merged
  object's score and mask_score are the maxima of its parts. ``merge_rule="touching"`` keeps the
  paper's rule (any same-label masks within the gap are one object) for the ``paper`` profile.
* **Depth**: the MEDIAN of the raw depth map inside each object's mask, normalised per image as
  ``(median - min) / (max - min)`` over the whole map's finite values, so 1 = the nearest pixel of
  the image, 0 = the farthest. (Median commutes with that monotone map, so this equals the median
  of the normalised map.) A constant map carries no depth contrast: every object gets 0.5.
* **Ids**: objects are numbered 0.. by area, largest first (ties: top-most, then left-most).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    return _box_ious_and_coverage(mask, boxes)[0]


def _box_ious_and_coverage(mask: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per box: (pixel IoU of the mask with the filled box, IoU of the mask's own box with the
    box, fraction of the mask inside the box), one integral image for all boxes."""
    m = M.as_bool(mask)
    h, w = m.shape
    n = len(boxes)
    if n == 0:
        z = np.zeros((0,), dtype=np.float64)
        return z, z, z
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = m.cumsum(0, dtype=np.int64).cumsum(1)
    area = int(integral[h, w])
    ext = np.array([M.rasterize_box(b, (h, w)) for b in boxes], dtype=np.int64).reshape(-1, 4)
    x0, y0, x1, y1 = ext.T
    inter = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    box_area = (x1 - x0) * (y1 - y0)
    union = area + box_area - inter
    pix = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    own = M.bbox(m)
    if own is None:
        z = np.zeros((n,), dtype=np.float64)
        return pix, z, z
    ox0, oy0, ox1, oy1 = own
    iw = np.clip(np.minimum(x1, ox1) - np.maximum(x0, ox0), 0, None)
    ih = np.clip(np.minimum(y1, oy1) - np.maximum(y0, oy0), 0, None)
    binter = iw * ih
    bunion = (ox1 - ox0) * (oy1 - oy0) + box_area - binter
    bb = np.where(bunion > 0, binter / np.maximum(bunion, 1), 0.0)
    cov = inter / area if area else np.zeros((n,), dtype=np.float64)
    return pix, bb, cov


@dataclass
class Match:
    """How one mask was labelled: the label, its detector score, the quality that decided it
    (box IoU, or pixel IoU under the ``mask`` rule), the index of the matched detection (None:
    ``unknown``) and the label candidates (label, score), best first."""

    label: str
    score: float
    quality: float
    detection: int | None
    candidates: list[tuple[str, float]] = field(default_factory=list)


MATCH_RULES = ("box", "mask")


def match_masks(masks: Sequence[np.ndarray], det: Detections, min_iou: float, *, rule: str = "box",
                min_coverage: float = 0.5, top_k: int = 5) -> list[Match]:
    """Per mask, its :class:`Match` under ``rule`` (see the module docstring)."""
    if rule not in MATCH_RULES:
        raise ValueError(f"unknown match rule {rule!r}; choose one of {', '.join(MATCH_RULES)}")
    out: list[Match] = []
    for m in masks:
        pix, bb, cov = _box_ious_and_coverage(m, det.boxes)
        quality = pix if rule == "mask" else bb
        covered = [j for j in range(len(det)) if rule == "mask" or cov[j] >= min_coverage]
        eligible = [j for j in covered if quality[j] > 0 and quality[j] >= min_iou]
        if not eligible:  # the best quality seen is still reported (why it stayed unknown)
            out.append(Match(UNKNOWN, 0.0, max((float(quality[j]) for j in covered), default=0.0), None, []))
            continue
        j = max(eligible, key=lambda j: (float(quality[j]), float(det.scores[j]), -j))
        cands: dict[str, float] = {}
        for e in eligible:
            for lab, sc in det.label_candidates(e):
                if sc > cands.get(lab, -1.0):
                    cands[lab] = sc
        ranked = sorted(cands.items(), key=lambda kv: (-kv[1], kv[0]))[: max(1, int(top_k))]
        out.append(Match(det.labels[j], float(det.scores[j]), float(quality[j]), j,
                         [(lab, float(sc)) for lab, sc in ranked]))
    return out


def _rect_iou(a: Sequence[int], b: Sequence[int]) -> float:
    return M.box_iou(a, b)


def complete_fragments(masks: Sequence[np.ndarray], matches: list[Match], det: Detections, gap: int,
                       inside: float = 0.9) -> list[Match]:
    """Give an ``unknown`` mask the detection of a neighbour when it is a missing piece of that
    detection's object: it lies at least ``inside`` within the detection box, it is within ``gap``
    px of a mask matched to that detection, and adding it makes the matched masks' joint box fit
    the detection box better (IoU rises). A chair split by SAM2 into seat and back is then one
    chair after merging; a cup inside a table's box does not enlarge the table's box, so it stays
    apart."""
    if not len(det):
        return matches
    out = list(matches)
    shape = M.as_bool(masks[0]).shape if len(masks) else (0, 0)
    ext = [M.rasterize_box(b, shape) for b in det.boxes]
    boxes = [M.bbox(m) for m in masks]
    changed = True
    while changed:
        changed = False
        groups: dict[int, list[int]] = {}
        for i, mt in enumerate(out):
            if mt.detection is not None:
                groups.setdefault(mt.detection, []).append(i)
        for i in sorted(range(len(masks)), key=lambda i: -M.area(masks[i])):
            if out[i].detection is not None or boxes[i] is None:
                continue
            _, _, cov = _box_ious_and_coverage(masks[i], det.boxes)
            best: tuple[float, int] | None = None
            for j, members in groups.items():
                if cov[j] < inside or not any(M.adjacent(masks[i], masks[k], gap) for k in members):
                    continue
                joint = _joint_box([boxes[k] for k in members])
                gain = _rect_iou(_joint_box([joint, boxes[i]]), ext[j]) - _rect_iou(joint, ext[j])
                if gain > 1e-9 and (best is None or gain > best[0]):
                    best = (gain, j)
            if best is not None:
                j = best[1]
                own = _rect_iou(boxes[i], ext[j])
                out[i] = Match(det.labels[j], float(det.scores[j]), own, j, det.label_candidates(j))
                groups[j].append(i)
                changed = True
    return out


def _joint_box(boxes: Sequence[Sequence[int]]) -> tuple[int, int, int, int]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def match_labels(masks: Sequence[np.ndarray], det: Detections, min_iou: float, *, rule: str = "box",
                 min_coverage: float = 0.5) -> list[tuple[str, float, float]]:
    """Per mask: (label, detector score, the IoU that decided it)."""
    return [(mt.label, mt.score, mt.quality)
            for mt in match_masks(masks, det, min_iou, rule=rule, min_coverage=min_coverage)]


MERGE_RULES = ("fragments", "touching")


def merge_groups(masks: Sequence[np.ndarray], labels: Sequence[str], gap: int,
                 detections: Sequence[int | None] | None = None, inside_fraction: float = 0.8,
                 rule: str = "fragments") -> list[list[int]]:
    """Groups of masks that are fragments of one instance: same known label and either matched to
    the same detection (``detections[i]``, None = none) and within ``gap`` px of each other, or
    one at least ``inside_fraction`` inside the other; transitively. Without ``detections`` only
    the inside rule applies. ``rule="touching"`` is the paper's rule instead: ANY two same-label
    masks within ``gap`` px are one object (touching instances fuse).

    Returns groups of mask indices, each sorted, in order of their smallest index."""
    if rule not in MERGE_RULES:
        raise ValueError(f"unknown merge rule {rule!r}; choose one of {', '.join(MERGE_RULES)}")
    n = len(masks)
    parent = list(range(n))
    flat = [M.as_bool(m).reshape(-1) for m in masks]
    areas = [int(f.sum()) for f in flat]

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
            same_det = rule == "touching" or (detections is not None and detections[i] is not None
                                               and detections[i] == detections[j])
            if same_det and M.adjacent(masks[i], masks[j], gap):
                parent[find(j)] = find(i)
                continue
            small = min(areas[i], areas[j])
            if small and int(np.count_nonzero(flat[i] & flat[j])) >= inside_fraction * small:
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
    match_rule: str = "box",
    match_min_coverage: float = 0.5,
    merge_inside_fraction: float = 0.8,
    label_candidates: int = 5,
    merge_rule: str = "fragments",
) -> Scene:
    if len(seg) and seg.shape != (height, width):
        raise ValueError(f"masks are {seg.shape[1]}x{seg.shape[0]} but the image is {width}x{height}")
    raw = [(seg.masks[i], float(seg.scores[i])) for i in range(len(seg)) if M.area(seg.masks[i]) >= max(1, min_object_area)]
    mask_list = [m for m, _ in raw]
    matches = match_masks(mask_list, det, match_min_iou, rule=match_rule, min_coverage=match_min_coverage,
                          top_k=label_candidates)
    if merge_rule == "fragments":
        matches = complete_fragments(mask_list, matches, det, merge_gap_px)
    labels = [mt.label for mt in matches]
    groups = merge_groups(mask_list, labels, merge_gap_px, [mt.detection for mt in matches],
                          inside_fraction=merge_inside_fraction, rule=merge_rule)
    merged: list[dict[str, Any]] = []
    for g in groups:
        cands: dict[str, float] = {}
        for i in g:
            for lab, sc in matches[i].candidates:
                cands[lab] = max(sc, cands.get(lab, -1.0))
        merged.append(
            {
                "mask": M.union(mask_list[i] for i in g),
                "label": labels[g[0]],
                "score": max(matches[i].score for i in g),
                "mask_score": max(raw[i][1] for i in g),
                "parts": len(g),
                "candidates": sorted(cands.items(), key=lambda kv: (-kv[1], kv[0]))[: max(1, label_candidates)],
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
                                   mask_score=o["mask_score"], attributes=attrs, label_candidates=o["candidates"])
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
                                   mask_score=obj.mask_score, attributes=attrs,
                                   label_candidates=[(c.label, c.score) for c in obj.label_candidates])
        masks[oid] = m
    ssr = new.ssr.model_copy(update={"objects": objects, "version": version})
    ssr = SSR.model_validate(ssr.model_dump())
    return refresh_builtin(Scene(ssr=ssr, masks=masks), compute=has_builtin(old.ssr))
