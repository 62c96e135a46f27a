"""Spatial perception: SAM2's automatic mask generator, every generator setting from config."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from cielr_core.config import SAM2Config
from cielr_core.devices import device_lock, script_lock
from cielr_core.perception.results import SegmentResult

# SAM2Config fields that are SAM2AutomaticMaskGenerator arguments (and so may be overridden per call)
GENERATOR_FIELDS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "crop_n_layers",
    "crop_n_points_downscale_factor",
    "box_nms_thresh",
    "min_mask_region_area",
    "use_m2m",
)


def generator_settings(cfg: SAM2Config, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The generator arguments: config values with ``overrides`` merged on top (validated)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(GENERATOR_FIELDS))
    if unknown:
        raise ValueError(f"unknown SAM2 generator setting(s) {unknown}; allowed: {', '.join(GENERATOR_FIELDS)}")
    merged = cfg.model_copy(update={}).model_dump()
    merged.update(overrides)
    checked = SAM2Config.model_validate(merged)  # types and the like, as for the config itself
    return {k: getattr(checked, k) for k in GENERATOR_FIELDS}


def autocast_context(device: str, dtype: torch.dtype):
    """bf16/fp16 autocast on CUDA when a half dtype is configured; nothing on CPU."""
    if device.startswith("cuda") and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def run_generator(model: Any, rgb: np.ndarray, settings: dict[str, Any], *, device: str,
                  dtype: torch.dtype, features: list[Any] | None = None) -> SegmentResult:
    """``features``: the image encoder's output for each crop the generator encodes, in its order
    (cielr_core.batching.sam2_crops / sam2_encode: computed by a batcher across the images in
    flight); the generator then runs only its mask decoder."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    h, w = rgb.shape[:2]
    with script_lock:  # its predictor scripts SAM2's transforms (cielr_core.devices.script_lock)
        gen = SAM2AutomaticMaskGenerator(model, output_mode="binary_mask", **settings)
    if features is not None:
        from cielr_core.batching import install_sam2_features

        pending = list(features)

        def set_image(im: np.ndarray) -> None:
            if not pending or tuple(pending[0].orig_hw) != tuple(im.shape[:2]):
                raise RuntimeError(f"SAM2: no precomputed features for a {im.shape[1]}x{im.shape[0]} crop")
            install_sam2_features(gen.predictor, pending.pop(0))

        gen.predictor.set_image = set_image
    with device_lock(device), torch.inference_mode(), autocast_context(device, dtype):  # one pass per GPU at a time
        anns = gen.generate(np.ascontiguousarray(rgb))
    if not anns:
        return SegmentResult.empty(h, w)
    masks = np.stack([np.asarray(a["segmentation"], dtype=bool) for a in anns])
    scores = np.array([float(a["predicted_iou"]) for a in anns], dtype=np.float32)
    return SegmentResult(masks, scores)
