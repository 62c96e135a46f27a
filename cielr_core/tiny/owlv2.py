"""Tiny random-weight OWLv2 (same classes as google/owlv2-base-patch16-ensemble), written locally.

The tokenizer is a real ``CLIPTokenizer`` over a locally made byte-level vocabulary (every byte
symbol, alone and word-final, plus the special tokens) and no merges, so any text tokenises. The
image processor is the real ``Owlv2ImageProcessor`` (pad to square, resize) at 96 x 96, so the
model sees a 6 x 6 patch grid: 36 candidate boxes per image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cielr_core.tiny.clip_vocab import write_clip_vocab

IMAGE_SIZE = 96
PATCH_SIZE = 16
MAX_TEXT_LEN = 16


def make(out_dir: Path, seed: int) -> None:
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # "!" is id 0, a real symbol, as in CLIP; the model treats a query whose first token id is 0
    # as padding, and every query starts with <|startoftext|> anyway.
    vocab = write_clip_vocab(out_dir)
    tokenizer = CLIPTokenizer(
        str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=MAX_TEXT_LEN, pad_token="!"
    )

    torch.manual_seed(seed)
    config = Owlv2Config(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": MAX_TEXT_LEN,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["!"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        projection_dim=32,  # the class head needs projection_dim == text hidden size (as in the real model)
    )
    model = Owlv2ForObjectDetection(config).eval()
    model.save_pretrained(out_dir)
    image_processor = Owlv2ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
