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

    transient = False  # a retry finds the same files


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


_threads_lock = threading.Lock()


def pin_intra_op_threads(n: int) -> None:
    """Run torch's CPU kernels on exactly ``n`` intra-op threads in this process.

    CPU kernels split their reductions by the number of intra-op threads (a 1x1 convolution gives
    other bytes on one thread than on two; GroupNorm on a channels-last input adds per-thread
    partial sums), so the same model on the same input gives different bytes under another thread
    count. The count torch starts with is the process's (all cores in-process, 1 in a Dask worker,
    whose nanny sets OMP_NUM_THREADS=1): every process that runs stages pins the one from the
    settings instead, so results do not depend on where an image ran."""
    n = int(n)
    with _threads_lock:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


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


#: the setting that points each model kind at a local copy (as an environment variable)
PATH_SETTING = {
    "sam2": "CIELR_PERCEPTION__SAM2__MODEL__PATH",
    "owlv2": "CIELR_PERCEPTION__OWLV2__MODEL__PATH",
    "depth": "CIELR_PERCEPTION__DEPTH__MODEL__PATH",
    "llm": "CIELR_LLM__MODEL__PATH",
    "inpaint": "CIELR_EDITING__MODEL__PATH",
    "lama": "CIELR_EDITING__LAMA__MODEL__PATH",
    "instruct": "CIELR_EDITING__INSTRUCT__MODEL__PATH",
    "clip": "CIELR_EVAL__CLIP__PATH",
    "dino": "CIELR_EVAL__DINO__PATH",
}


def download_hint(source: str, filename: str | None = None) -> str:
    """The command that fetches a hub model into the Hugging Face cache (huggingface_hub's `hf` CLI)."""
    return f"`hf download {source}{' ' + filename if filename else ''}`"


def unavailable_message(kind: str, source: str, revision: str | None, cause: BaseException | str) -> str:
    rev = f" (revision {revision})" if revision else ""
    local = os.path.exists(source)
    setting = PATH_SETTING.get(kind)
    point = (f"point {setting} at a local copy ({setting}=/path/to/model)" if setting
             else "point the config at a local copy")
    hint = (
        f"the local path {source!r} exists but could not be loaded; re-create it"
        if local
        else (
            f"download it once where a hub is reachable ({download_hint(source)}) into the "
            f"Hugging Face cache (HF_HOME), or {point}; for offline runs use `cielr models tiny` "
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


def looks_local(source: str) -> bool:
    """A model source that is a filesystem path rather than a hub id (``org/name``)."""
    return os.path.isabs(source) or source.startswith(("./", "../", "~")) or os.path.exists(source)


def load_pretrained_pair(kind: str, source: str, model_cls: Any, processor_cls: Any, *, revision: str | None,
                         device: str, dtype: Any = None, check: Callable[[], None] | None = None) -> tuple[Any, Any]:
    """``(model, processor)`` of a transformers checkpoint through the registry: ``model_cls`` /
    ``processor_cls`` are callables returning the classes (imported only when a load happens),
    ``check()`` runs first (e.g. a clear error for a missing local path). ``dtype`` None keeps the
    checkpoint's float32 weights; the registry key records it either way."""

    def loader() -> tuple[Any, Any]:
        if check is not None:
            check()
        kw = hf_kwargs(revision)
        model_kw = dict(kw, dtype=dtype) if dtype is not None else kw
        model = model_cls().from_pretrained(source, **model_kw).to(device).eval()
        return model, processor_cls().from_pretrained(source, **kw)

    return get_model(kind, source, loader, revision=revision, device=device,
                     dtype=str(dtype) if dtype is not None else "float32")


def transformers_class(name: str) -> Callable[[], Any]:
    """A callable returning ``transformers.<name>``: the import happens only when a model loads."""

    def get() -> Any:
        import transformers

        return getattr(transformers, name)

    return get


# -- resources ----------------------------------------------------------------------------------
def is_cuda_oom(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (torch.OutOfMemoryError, or the RuntimeError older torch raised)."""
    return isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or "OutOfMemoryError" in type(exc).__name__ \
        or "CUDA out of memory" in str(exc)


def halve_batch_on_cuda_oom(run: Callable[[int | None], Any], batch: int, *,
                            on_retry: Callable[[int], None] | None = None) -> Any:
    """``run(None)`` (the configured batch size); on CUDA out-of-memory, once more as ``run(n)`` at
    half the configured ``batch`` (at least 1) after freeing the allocator's cache. A second OOM
    propagates (the orchestration retries OOM as transient). Batch sizes change memory use, never
    results, so callers keep them out of their digests."""
    try:
        return run(None)
    except Exception as e:  # noqa: BLE001
        if not is_cuda_oom(e):
            raise
    smaller = max(1, batch // 2)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if on_retry is not None:
        on_retry(smaller)
    return run(smaller)
