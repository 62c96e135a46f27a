"""Tiny random-weight DepthAnything (same classes as depth-anything/Depth-Anything-V2-Small-hf).

A DINOv2 backbone with 4 layers of width 32 and a shrunken DPT neck/head; the image processor is
the real ``DPTImageProcessor`` configured as DepthAnything's (keep aspect ratio, multiple of 14)
but with a 56-pixel target instead of 518, so a forward pass on CPU takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

INPUT_SIZE = 56


def make(out_dir: Path, seed: int) -> None:
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    backbone = Dinov2Config(
        image_size=INPUT_SIZE,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    # transformers' init leaves the tiny head's output constant (all-zero map after its ReLU); a
    # PyTorch-default style re-init gives a depth map that varies across the image, which is what
    # exercises the per-object medians and the per-image normalisation downstream.
    with torch.no_grad():
        for name, w in model.named_parameters():
            if w.dim() > 1:
                torch.nn.init.kaiming_uniform_(w, a=5**0.5)
            elif name.endswith("bias"):
                w.uniform_(-0.1, 0.1)
    model.save_pretrained(out_dir)
    DPTImageProcessor(
        do_resize=True,
        size={"height": INPUT_SIZE, "width": INPUT_SIZE},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic, as DepthAnything's own processor
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_pad=False,
    ).save_pretrained(out_dir)
