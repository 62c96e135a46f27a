"""Model registry: each model is loaded once per process.

Keyed by ``(kind, id_or_path, revision, device, dtype)``; thread-safe (a per-key lock, so two
threads asking for the same model wait for one load, while different models load in parallel).
``stats()`` counts loads per kind, which tests and the orchestration layer use to show that a fully
cached run loads nothing.

Loaders read local paths or the Hugging Face cache only when the hub is unreachable: a missing
model raises :class:`ModelUnavailableError` naming the model and the ways to provide it.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch


class ModelUnavailableError(RuntimeError):
    """The weights for a model could not be found or loaded."""


@dataclass(frozen=True)
class ModelKey:
    kind: str
    source: str  # hub id or local path
    revision: str | None
    device: str
    dtype: str


_lock = threading.Lock()
_key_locks: dict[ModelKey, threading.Lock] = {}
_models: dict[ModelKey, Any] = {}
_loads: Counter[str] = Counter()


def resolve_device(device: str = "auto") -> str:
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailableError(f"device {device!r} requested but CUDA is not available on this machine")
    return device


def resolve_dtype(dtype: str = "auto", device: str = "cpu") -> torch.dtype:
    """`auto` is float32 on CPU, bfloat16 on CUDA devices that support it (else float16)."""
    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}") from None


def get_model(
    kind: str,
    source: str,
    loader: Callable[[], Any],
    *,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> Any:
    """Return the cached model for this key, calling ``loader()`` the first time."""
    key = ModelKey(kind, source, revision, device, str(dtype))
    with _lock:
        if key in _models:
            return _models[key]
        klock = _key_locks.setdefault(key, threading.Lock())
    with klock:
        with _lock:
            if key in _models:
                return _models[key]
        try:
            model = loader()
        except ModelUnavailableError:
            raise
        except (OSError, FileNotFoundError, ValueError, EnvironmentError) as e:
            raise ModelUnavailableError(unavailable_message(kind, source, revision, e)) from e
        with _lock:
            _models[key] = model
            _loads[kind] += 1
        return model


def unavailable_message(kind: str, source: str, revision: str | None, cause: BaseException | str) -> str:
    rev = f" (revision {revision})" if revision else ""
    local = os.path.exists(source)
    hint = (
        f"the local path {source!r} exists but could not be loaded; re-create it"
        if local
        else (
            f"download it once where a hub is reachable (`huggingface-cli download {source}`) into the "
            "Hugging Face cache (HF_HOME), or point the config at a local copy (e.g. "
            "CIELR_PERCEPTION__OWLV2__MODEL__PATH=/path/to/model); for offline runs use `cielr models tiny` "
            "and `--profile tiny` (random weights, meaningless edits)"
        )
    )
    return f"{kind} model {source!r}{rev} is not available: {cause}. To fix: {hint}."


def stats() -> dict[str, int]:
    """Number of loads per kind in this process."""
    with _lock:
        return dict(_loads)


def loaded() -> list[ModelKey]:
    with _lock:
        return list(_models)


def clear() -> None:
    """Forget every cached model (tests; frees memory)."""
    with _lock:
        _models.clear()
        _key_locks.clear()
        _loads.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def hf_kwargs(revision: str | None) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained``: the revision, and local-only when offline."""
    kw: dict[str, Any] = {}
    if revision:
        kw["revision"] = revision
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        kw["local_files_only"] = True
    return kw
