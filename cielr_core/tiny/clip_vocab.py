"""A CLIP tokenizer vocabulary made locally, shared by the tiny CLIP, OWLv2 and SD text encoders.

Every byte symbol of CLIP's byte-to-unicode table, alone and word-final (``</w>``), then the two
special tokens, and no merges: a real ``CLIPTokenizer`` over it tokenises any text, character by
character. ``"!"`` comes first, so id 0 is a real symbol, as in CLIP.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def byte_symbols() -> list[str]:
    """GPT-2 / CLIP byte-to-unicode table (printable stand-ins for all 256 bytes), in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_vocab(out_dir: Path) -> dict[str, int]:
    """Write ``vocab.json`` and an empty ``merges.txt`` into ``out_dir``; returns the vocabulary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    vocab = {tok: i for i, tok in enumerate(symbols + [s + "</w>" for s in symbols] + SPECIAL)}
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return vocab
