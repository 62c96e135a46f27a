"""Toy-size, random-weight versions of the real architectures, written locally.

Each module here writes one model family into ``<models_dir>/<name>`` in the same on-disk format
as the real weights, so the real loaders (``from_pretrained``, ``build_sam2``) read them. Nothing
is downloaded. ``make_all`` is what ``cielr models tiny`` runs; it skips families already made.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

# family name -> module (relative to this package) that defines ``make(out_dir: Path, seed: int)``
FAMILIES: dict[str, str] = {
    "sam2": "sam2",
    "owlv2": "owlv2",
    "depth-anything": "depth",
    "qwen2": "llm",
    "qwen2.5-vl": "vlm",
    "sd-inpaint": "inpaint",
    "lama": "lama",
    "ip2p": "ip2p",
    "clip": "clip",
    "dino": "dino",
}

MARKER = ".cielr-tiny-complete"


def make(family: str, models_dir: str | os.PathLike, *, seed: int = 0, force: bool = False) -> Path:
    """Write one tiny family to ``models_dir/family`` (skipped if already complete)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; known: {', '.join(FAMILIES)}")
    out = Path(models_dir).expanduser() / family
    if (out / MARKER).exists() and not force:
        return out
    out.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"{__name__}.{FAMILIES[family]}")
    builder: Callable[[Path, int], None] = module.make
    builder(out, seed)
    (out / MARKER).write_text("ok\n")
    return out


def make_all(
    models_dir: str | os.PathLike,
    *,
    families: list[str] | None = None,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    out = {}
    for fam in families or list(FAMILIES):
        if progress:
            progress(fam)
        out[fam] = make(fam, models_dir, seed=seed, force=force)
    return out


def is_complete(models_dir: str | os.PathLike, family: str) -> bool:
    return (Path(models_dir).expanduser() / family / MARKER).exists()
