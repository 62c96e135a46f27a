"""Tiny random-weight Stable Diffusion inpainting pipeline (the SD 1.5 inpaint architecture at toy size).

Written with ``save_pretrained`` in the diffusers layout (``model_index.json`` + one folder per
component), so ``StableDiffusionInpaintPipeline.from_pretrained`` / ``AutoPipelineForInpainting``
load it exactly like the real weights. Components:

* UNet2DConditionModel with 9 input channels (4 noisy latents + 4 masked-image latents + 1 mask),
  two blocks (32, 64), cross-attention width 32;
* AutoencoderKL with four blocks, so the VAE scale factor is 8 as in SD (64 px image -> 8x8 latents);
* CLIPTextModel (hidden 32, 2 layers) and a CLIPTokenizer whose vocabulary (the 256 byte symbols,
  each also with the end-of-word suffix, and the two specials) and empty merges are written here;
* DDIMScheduler with SD's noise schedule.

No safety checker (``requires_safety_checker=False``). Random weights: outputs are noise-like.
"""

from __future__ import annotations

from pathlib import Path

from cielr_core.tiny.clip_vocab import write_clip_vocab


def write_tokenizer(out_dir: Path) -> int:
    """Write a character-level CLIP tokenizer (vocab.json + merges.txt); returns the vocab size."""
    return len(write_clip_vocab(out_dir))

def make(out_dir: Path, seed: int) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    write_sd_pipeline(out_dir, seed, StableDiffusionInpaintPipeline, in_channels=9)


def write_sd_pipeline(out_dir: Path, seed: int, pipeline_class, in_channels: int) -> None:
    """Write a toy SD-architecture pipeline of ``pipeline_class`` whose UNet takes ``in_channels``
    (9 for inpainting, 8 for InstructPix2Pix: noisy latents + the input image's latents)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    tok_dir = out_dir / "_tokenizer_src"
    vocab_size = write_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer(
        vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"), model_max_length=77
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    for p in tok_dir.iterdir():
        p.unlink()
    tok_dir.rmdir()
