"""CIELR: complex image editing via LLM reasoning. The method itself, as a plain library.

Perception (SAM2, OWLv2, DepthAnything -> the SSR), reasoning (the LLM loop over the SSR, the
sandbox), editing (inpainting a plan), metrics and benchmarks; with the schemas every stage speaks
(ssr.py, plan.py, manifest.py), the configuration (config.py), the model registry and resource
policy (models.py), and the codecs and canonical forms (images.py, masks.py, canonical.py).

Layering: the bottom layer. It may import third-party libraries only (numpy, torch, transformers,
diffusers, pydantic, ...): never prefect, storage, fsspec or s3fs, nor tasks, flows or the command
line (tests/test_layering.py checks the first four). It reads local files where a caller hands it
a path (weights, benchmark folders) and otherwise works on values in memory.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from cielr_core import edit, EditResult``: the Python API (cielr_core/api.py), imported on
    first use so that ``import cielr_core`` stays light."""
    if name in ("edit", "EditResult"):
        from cielr_core import api

        return getattr(api, name)
    raise AttributeError(f"module 'cielr_core' has no attribute {name!r}")
