"""Depth perception: DepthAnything relative depth, one forward pass per image.

DepthAnything predicts relative inverse depth (disparity): larger values are nearer. The map is
resized (bicubic) to the image size and returned as float32 (H, W). Per-object medians and the
per-image normalisation to [0, 1] happen in :mod:`cielr_core.perception.build`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cielr_core.devices import device_lock


def predict_depth(model: Any, processor: Any, rgb: np.ndarray) -> np.ndarray:
    return predict_depth_batch(model, processor, [rgb])[0]


def predict_depth_batch(model: Any, processor: Any, rgbs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Depth maps of images that share one size, in one forward pass (the processor keeps the
    aspect ratio, so only same-size images stack; :meth:`Perceiver.depth_many` groups them)."""
    if not rgbs:
        return []
    shapes = {r.shape[:2] for r in rgbs}
    if len(shapes) != 1:
        raise ValueError(f"a depth batch needs images of one size, got {sorted(shapes)}")
    h, w = rgbs[0].shape[:2]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    padded = [pad_thin(r, processor) for r in rgbs]
    ph, pw = padded[0].shape[:2]
    inputs = processor(images=padded, return_tensors="pt")
    with device_lock(device), torch.inference_mode():  # one forward on a GPU at a time
        pred = model(pixel_values=inputs["pixel_values"].to(device, dtype)).predicted_depth  # (B, h', w')
        pred = torch.nn.functional.interpolate(pred[:, None].float(), size=(ph, pw), mode="bicubic", align_corners=False)
    return [p[0, :h, :w].cpu().numpy().astype(np.float32) for p in pred]


def pad_thin(rgb: np.ndarray, processor: Any, patch: int = 14) -> np.ndarray:
    """``rgb`` itself, unless it is so thin that the processor (which fits the long side to its size
    and rounds sides to multiples of the patch) would give its short side less than one patch (a
    zero-size input): then edge-padded at the bottom/right to one patch there; the caller crops the
    depth map back. Images the processor handled before are never padded: their depth is unchanged."""
    size = getattr(processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    target = max(int(get("height", 0) or 0), int(get("width", 0) or 0))
    h, w = rgb.shape[:2]
    if not target or min(h, w) * target / max(h, w) >= patch:
        return rgb
    need = int(np.ceil(patch * max(h, w) / target))
    return np.pad(rgb, ((0, max(0, need - h)), (0, max(0, need - w)), (0, 0)), mode="edge")
