"""Benchmark loaders: each turns a benchmark's published layout into rows and a Parquet manifest.

* :func:`load_ciebench` — CIEBench (``updated_data.json`` + ``i/i.png`` + ``i/i_mask.png``);
* :func:`load_smartedit` — the SmartEdit reasoning set (images, ``*_mask.jpg``, one text file);
* :func:`load_magicbrush` — MagicBrush test (``edit_sessions.json`` + ``images/<id>/``);
* :func:`load_benchmark` — ``"ciebench:PATH"`` style specs (what ``cielr eval --benchmark`` takes);
* :func:`to_manifest` — rows -> Parquet manifest (``image_id``, ``image_uri``, ``instruction``,
  ``seed``, ``mask_uri``, ``reference_text``);
* :func:`load_gt_mask` — a GT mask as bool (binarised, optionally resized to its image).

Bad entries are collected in ``rows.rejected`` (never fatal); a benchmark that cannot be read
at all raises ``ValueError``.
"""

from __future__ import annotations

from cielr_core.benchmarks.ciebench import load_ciebench
from cielr_core.benchmarks.common import BenchmarkRows, load_gt_mask, to_manifest
from cielr_core.benchmarks.magicbrush import load_magicbrush
from cielr_core.benchmarks.smartedit import load_smartedit

LOADERS = {"ciebench": load_ciebench, "smartedit": load_smartedit, "magicbrush": load_magicbrush}


def load_benchmark(spec: str) -> BenchmarkRows:
    """``"<name>:<path>"`` (name one of ``ciebench``, ``smartedit``, ``magicbrush``) -> rows."""
    name, sep, path = spec.partition(":")
    if not sep or name not in LOADERS or not path:
        raise ValueError(f"benchmark spec {spec!r}: use NAME:PATH with NAME one of {', '.join(LOADERS)}")
    return LOADERS[name](path)


__all__ = [
    "LOADERS",
    "BenchmarkRows",
    "load_benchmark",
    "load_ciebench",
    "load_gt_mask",
    "load_magicbrush",
    "load_smartedit",
    "to_manifest",
]
