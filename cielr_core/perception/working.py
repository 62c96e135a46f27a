"""The bounded working resolution: what every perception model sees of a large image.

Models do not get a large image as it is: SAM2's automatic generator keeps per-point-batch mask
logits at the input size, OWLv2's processor pads to a square at the input size before resizing
(a 30000x8 strip would become a 30000x30000 float array, 10.8 GB), and depth maps are upsampled
to it. So each model perceives a copy whose long side is at most ``limits.max_working_side``
(area-averaged), and what comes back is mapped to the image's own size:

* masks: nearest-neighbour, so a mask stays a union of whole working pixels;
* boxes: divided by the scale, clipped to the image;
* depth: bilinear.

Images within the bound are perceived as they are (nothing is copied; results are bit-for-bit
those of before the bound existed, and no cache key changed). The bound is a resource limit, not a
result-determining setting: it is not in the perception digest, so choose it once per store (the
default, 2048, is above what SAM2 (1024), OWLv2 (960/1008) and DepthAnything (518) resize to).
"""

from __future__ import annotations

import cv2
import numpy as np

from cielr_core.perception.results import Detections, SegmentResult


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) of the working copy: the image's own size when its long side is within ``max_side``."""
    long_side = max(height, width)
    if not max_side or long_side <= max_side:
        return height, width
    scale = max_side / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


def working_copy(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """``rgb`` itself when within the bound, else an area-averaged copy with long side ``max_side``."""
    h, w = rgb.shape[:2]
    wh, ww = working_size(h, w, max_side)
    if (wh, ww) == (h, w):
        return rgb
    return np.ascontiguousarray(cv2.resize(rgb, (ww, wh), interpolation=cv2.INTER_AREA))


def _nearest_index(out_len: int, in_len: int) -> np.ndarray:
    # the working pixel whose footprint holds each output pixel's centre
    return np.minimum(((np.arange(out_len) + 0.5) * in_len / out_len).astype(np.int64), in_len - 1)


def masks_to_size(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, h, w) bool masks -> (N, height, width), nearest-neighbour."""
    m = np.asarray(masks, dtype=bool)
    n, h, w = m.shape
    if (h, w) == (height, width):
        return m
    rows, cols = _nearest_index(height, h), _nearest_index(width, w)
    out = np.empty((n, height, width), dtype=bool)
    for i in range(n):  # one mask at a time: no (N, H, w) intermediate
        out[i] = m[i][rows][:, cols]
    return out


def segment_to_size(seg: SegmentResult, height: int, width: int) -> SegmentResult:
    if seg.shape == (height, width):
        return seg
    return SegmentResult(masks_to_size(seg.masks, height, width), seg.scores)


def detections_to_size(det: Detections, from_hw: tuple[int, int], height: int, width: int) -> Detections:
    """Boxes found on a working copy of size ``from_hw`` in the image's own pixels."""
    fh, fw = from_hw
    if (fh, fw) == (height, width) or len(det.boxes) == 0:
        return det
    boxes = det.boxes.astype(np.float64) * np.array([width / fw, height / fh, width / fw, height / fh])
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return Detections(boxes.astype(np.float32), det.scores, det.labels, det.candidates)


def depth_to_size(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    d = np.asarray(depth, dtype=np.float32)
    if d.shape == (height, width):
        return d
    return cv2.resize(d, (width, height), interpolation=cv2.INTER_LINEAR)


__all__ = [
    "depth_to_size",
    "detections_to_size",
    "masks_to_size",
    "segment_to_size",
    "working_copy",
    "working_size",
]
