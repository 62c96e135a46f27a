"""Tiny random-weight DINO (a ``ViTModel``, the class of facebook/dino-vits16), written locally."""

from __future__ import annotations

from pathlib import Path

import torch


def make(out_dir: Path, seed: int) -> None:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    ViTModel(config).eval().save_pretrained(out_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out_dir)
