"""Images in flight: a chunk keeps up to ``orchestration.max_in_flight`` images in progress at once.

Each image is still its own chain of stage tasks (own cache keys, retries and states: nothing here
changes how a stage task runs); what changes is that several chains run at the same time, one per
thread of a pool as wide as the window. Prefect links a task run to its flow run through context
variables, so every image starts in a copy of the calling flow's context
(``contextvars.copy_context()``, as Prefect's own ThreadPoolTaskRunner does); a context can be
entered by one thread at a time, so each image gets its own copy.

Memory is bounded by the window, not the chunk: at most ``window`` images are being worked on at
once (the rows waiting their turn are small dicts, the rows done are result rows). Results come
back in the order of the input rows, whatever order the images finish in.

Outputs do not depend on the window: the stage tasks are deterministic per image (their seeds are
their own, torch's intra-op threads pinned process-wide by ``orchestration.torch_threads``), and on
CPU the model batchers are off by default (:mod:`cielr_core.batching`), so an image's bytes are the
same at any window.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Sequence, TypeVar

from cielr_core.config import Settings

T = TypeVar("T")
R = TypeVar("R")

CPU_DEFAULT = 2
GPU_DEFAULT = 8


def window(s: Settings) -> int:
    """``orchestration.max_in_flight``, or by device when unset: small on CPU (the stages already
    share few cores), larger on CUDA (models batch the requests of the images in flight)."""
    n = s.orchestration.max_in_flight
    if n is not None:
        return int(n)
    from cielr_core.models import resolve_device

    try:
        device = resolve_device(s.perception.device)
    except Exception:  # noqa: BLE001 - a device that is not there fails in the stage that needs it, with its message
        device = "cpu"
    return GPU_DEFAULT if device.startswith("cuda") else CPU_DEFAULT


def run_in_flight(
    fn: Callable[[T], R],
    items: Sequence[T],
    width: int,
    *,
    on_error: Callable[[T, BaseException], R],
    on_done: Callable[[int, R], Any] | None = None,
) -> list[R]:
    """``[fn(item) for item in items]`` with up to ``width`` calls in progress at once.

    ``fn`` runs in a copy of the caller's context (so Prefect task calls inside it belong to the
    caller's flow run). An exception escaping ``fn`` becomes that item's ``on_error(item, exc)``;
    the other items go on. ``on_done(index, result)`` is called in the caller's thread as each item
    finishes (completion order); the list returned is in input order."""
    n = len(items)
    out: list[Any] = [None] * n
    if n == 0:
        return []

    def finish(i: int, result: R) -> None:
        out[i] = result
        if on_done is not None:
            on_done(i, result)

    width = max(1, min(int(width), n))
    if width == 1:
        for i, item in enumerate(items):
            try:
                result = fn(item)
            except Exception as e:  # noqa: BLE001 - one image's failure is that image's row
                result = on_error(item, e)
            finish(i, result)
        return out

    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="cielr-in-flight") as pool:
        running: dict[Future, int] = {}
        nxt = 0

        def start(i: int) -> None:
            running[pool.submit(contextvars.copy_context().run, fn, items[i])] = i

        while nxt < n and len(running) < width:
            start(nxt)
            nxt += 1
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                i = running.pop(f)
                try:
                    result = f.result()
                except Exception as e:  # noqa: BLE001
                    result = on_error(items[i], e)
                finish(i, result)
                if nxt < n:  # keep the window full, never more than width images at once
                    start(nxt)
                    nxt += 1
    return out
