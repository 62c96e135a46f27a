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
    inputs = processor(images=list(rgbs), return_tensors="pt")
    with device_lock(device), torch.inference_mode():  # one forward on a GPU at a time
        pred = model(pixel_values=inputs["pixel_values"].to(device, dtype)).predicted_depth  # (B, h', w')
        pred = torch.nn.functional.interpolate(pred[:, None].float(), size=(h, w), mode="bicubic", align_corners=False)
    return [p[0].cpu().numpy().astype(np.float32) for p in pred]
