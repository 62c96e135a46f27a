"""How every stage task is run: content-digest cache keys, result storage on our store, retries
with exponential backoff and jitter on transient errors only, and a timeout (no tag: the GPU is
guarded per chunk, see tasks.gpu); and the one way to read how a task run ended (:func:`outcome`)."""

from __future__ import annotations

import logging
from typing import Any, Callable

from prefect import Task
from prefect.tasks import exponential_backoff

from cielr_core.config import Settings
from cielr_core.models import is_cuda_oom
from tasks import runtime

# OS errors that say the input is wrong, not that the system hiccupped.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException | None) -> bool:
    """Whether a retry may help.

    An exception that says so itself wins: a ``transient`` attribute (the store's StoreError, the
    LLM backends' LLMError; the bad-input errors of the method carry ``transient = False``). Else by
    type: CUDA out-of-memory and connection / timeout / other OS errors are transient, except the
    OS errors that name a missing or unreadable path; anything else (ValueError and its kin: bad
    input, invalid answers, validation errors; TypeError; bugs) is permanent.
    """
    if exc is None:
        return False
    flag = getattr(exc, "transient", None)
    if flag is not None:
        return bool(flag)
    if is_cuda_oom(exc):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) and not isinstance(exc, _PERMANENT_OS_ERRORS)


def outcome(state: Any) -> Any:
    """The value of a finished task run's state, or its exception raised (a crashed or cancelled run,
    which has none of its own, as a RuntimeError naming the state)."""
    if state.is_completed():
        return state.result()
    state.result(raise_on_failure=True)  # raises the run's own exception, where it has one
    raise RuntimeError(f"ended in state {state.name}: {state.message or 'task did not complete'}")


def failure_of(state: Any) -> BaseException | None:
    """The exception a state carries (None for a completed run)."""
    try:
        outcome(state)
    except BaseException as e:  # noqa: BLE001
        return e
    return None


def retry_only_transient(task: Task, task_run: Any, state: Any) -> bool:
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else failure_of(state)
    return is_transient(exc)


class _ThreadTimeoutNotice(logging.Filter):
    """Drops Prefect's per-task-run warning that a timeout cannot interrupt a task running in a worker
    thread (the images in flight run their stage tasks in threads): said on every task run, it cost a
    log record sent to the API per stage. The timeout still takes effect once the blocking call
    returns."""

    PREFIX = "Timeout of %s seconds configured for this task, but the task is running in a worker thread"

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.PREFIX))


_thread_timeout_notice = _ThreadTimeoutNotice()


def quiet_thread_timeout_notice() -> None:
    logger = logging.getLogger("prefect.task_runs")
    if _thread_timeout_notice not in logger.filters:
        logger.addFilter(_thread_timeout_notice)


def bind(
    task: Task,
    settings: Settings,
    *,
    cache_key: Callable[[dict[str, Any]], str] | None,
    timeout_s: float | None = None,
) -> Task:
    """``task`` with our run options. ``cache_key(parameters)`` returns the stage's cache key (one of
    tasks.keys' cache keys).

    No tags: a task-run tag costs a concurrency-slot request per task run (1.3-1.8 s each where the
    tag has a limit); GPU exclusivity is paid once per chunk instead (tasks.gpu.gpu_slot)."""
    quiet_thread_timeout_notice()
    orch = settings.orchestration
    opts: dict[str, Any] = dict(
        retries=orch.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=orch.retry_delay_s),
        retry_jitter_factor=orch.retry_jitter_factor,
        retry_condition_fn=retry_only_transient,
        timeout_seconds=timeout_s or orch.stage_timeout_s,
    )
    if cache_key is not None:
        opts.update(
            cache_key_fn=lambda ctx, params: cache_key(params),
            persist_result=True,
            result_storage=runtime.result_storage(settings),
            result_serializer="json",
            cache_result_in_memory=False,
        )
    else:
        opts.update(persist_result=False)
    return task.with_options(**opts)
