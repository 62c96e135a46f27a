"""Depth perception: DepthAnything relative depth, one forward pass per image.

DepthAnything predicts relative inverse depth (disparity): larger values are nearer. The map is
resized (bicubic) to the image size and returned as float32 (H, W). Per-object medians and the
per-image normalisation to [0, 1] happen in :mod:`cielr_core.perception.build`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def predict_depth(model: Any, processor: Any, rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = processor(images=rgb, return_tensors="pt")
    with torch.inference_mode():
        pred = model(pixel_values=inputs["pixel_values"].to(device, dtype)).predicted_depth  # (1, h', w')
        pred = torch.nn.functional.interpolate(
            pred[:, None].float(), size=(h, w), mode="bicubic", align_corners=False
        )[0, 0]
    return pred.cpu().numpy().astype(np.float32)
