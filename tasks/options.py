"""How every stage task is run: content-digest cache keys, result storage on our store, retries
with exponential backoff and jitter on transient errors only, a timeout, and the GPU tag."""

from __future__ import annotations

from typing import Any, Callable

from prefect import Task
from prefect.tasks import exponential_backoff

from cielr_core.config import Settings
from tasks import runtime

# Exceptions named here are bad input (or a method-level verdict): retrying cannot help.
_PERMANENT_NAMES = {
    "BadImageError",
    "InvalidAnswerError",
    "EditingError",
    "ManifestError",
    "KeyError_",
    "ValidationError",
    "ModelUnavailableError",
    "ArtifactNotFound",
    "ValueError",
    "TypeError",
}


def is_transient(exc: BaseException | None) -> bool:
    """Storage/network hiccups, LLM endpoint timeouts/429/5xx, CUDA out-of-memory: retry. Else not."""
    if exc is None:
        return False
    flag = getattr(exc, "transient", None)
    if flag is not None:
        return bool(flag)
    name = type(exc).__name__
    if name in _PERMANENT_NAMES:
        return False
    if "OutOfMemoryError" in name or "CUDA out of memory" in str(exc):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) and not isinstance(
        exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
    )


def retry_only_transient(task: Task, task_run: Any, state: Any) -> bool:
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as e:  # noqa: BLE001
            exc = e
    return is_transient(exc)


def short_key(key: str) -> str:
    """Cache keys are file names in the result storage: keep them well under file-name limits
    (255 bytes) as ``<stage>-<sha256 of the full key>``; short keys stay as they are."""
    if len(key) <= 100:
        return key
    import hashlib

    return f"{key.split('-', 1)[0]}-{hashlib.sha256(key.encode()).hexdigest()}"


def bind(
    task: Task,
    settings: Settings,
    *,
    cache_key: Callable[[dict[str, Any]], str] | None,
    gpu: bool = False,
    timeout_s: float | None = None,
) -> Task:
    """``task`` with our run options. ``cache_key(parameters)`` returns the stage's content digest."""
    orch = settings.orchestration
    opts: dict[str, Any] = dict(
        retries=orch.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=orch.retry_delay_s),
        retry_jitter_factor=orch.retry_jitter_factor,
        retry_condition_fn=retry_only_transient,
        timeout_seconds=timeout_s or orch.stage_timeout_s,
        tags=[orch.gpu_tag] if gpu else [],
    )
    if cache_key is not None:
        opts.update(
            cache_key_fn=lambda ctx, params: short_key(cache_key(params)),
            persist_result=True,
            result_storage=runtime.result_storage(settings),
            result_serializer="json",
            cache_result_in_memory=False,
        )
    else:
        opts.update(persist_result=False)
    return task.with_options(**opts)
