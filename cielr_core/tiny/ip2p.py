"""Tiny random-weight InstructPix2Pix pipeline (the SD 1.5 architecture of ``timbrooks/instruct-pix2pix``
at toy size): the same components as the tiny inpainting pipeline (:mod:`.inpaint`), with a UNet
of 8 input channels (4 noisy latents + 4 latents of the image to edit), written by
``StableDiffusionInstructPix2PixPipeline.save_pretrained`` so ``from_pretrained`` (and
``DiffusionPipeline.from_pretrained``) load it like the real weights. Random weights: meaningless edits.
"""

from __future__ import annotations

from pathlib import Path

from cielr_core.tiny.inpaint import write_sd_pipeline


def make(out_dir: Path, seed: int) -> None:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    write_sd_pipeline(out_dir, seed, StableDiffusionInstructPix2PixPipeline, in_channels=8)
