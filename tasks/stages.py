"""The stage tasks bound to one run's settings, and the record of how each call ended.

:class:`Stages` binds every stage task to its cache key, result storage, retries and timeout once
per run; :class:`StageRecorder` calls them, reads each final state the one way
(:func:`tasks.options.outcome`), and keeps the per-stage timings and cache hits that end in the
image's result row; :func:`in_worker` runs a whole image as one task, so a distributed task
runner (Dask) can place it on a worker.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from prefect import Task, task

from cielr_core.config import Settings
from tasks import runtime
from tasks.progress import check_stop
from tasks.editing import inpaint_cache_key, inpaint_step
from tasks.images import load_cache_key, load_image
from tasks.options import bind, outcome
from tasks.output import finalize, finalize_cache_key
from tasks.perception import (
    depth,
    depth_cache_key,
    detect,
    detect_cache_key,
    merge_cache_key,
    merge_ssr,
    segment,
    segment_cache_key,
)
from tasks.reasoning import decompose, decompose_cache_key, reason_step, reason_step_cache_key
from tasks.refs import STAGES, StageCount
from tasks.runtime import SettingsRef

T = TypeVar("T")

#: the image whose stages are being called (task runs are named ``segment[<image_id>]``)
current_image: ContextVar[str | None] = ContextVar("cielr_current_image", default=None)


def _run_name(task_name: str) -> Callable[[], str]:
    def name() -> str:
        image_id = current_image.get()
        return f"{task_name}[{image_id}]" if image_id else task_name

    return name


def named(t: Task) -> Task:
    """``t`` with its runs named after the image they work on (``segment[cie-12]``)."""
    return t.with_options(task_run_name=_run_name(t.name))


class StageFailed(RuntimeError):
    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


@dataclass
class Stages:
    """The stage tasks bound to one run's settings (cache keys, result storage, retries), with
    those settings and the reference that every task call takes."""

    settings: Settings
    ref: SettingsRef
    load: Task
    segment: Task
    detect: Task
    depth: Task
    merge: Task
    decompose: Task
    reason: Task
    inpaint: Task
    finalize: Task

    @classmethod
    def for_settings(cls, s: Settings, ref: SettingsRef | None = None) -> Stages:
        return cls(
            settings=s,
            ref=ref or runtime.settings_ref(s),
            load=named(bind(load_image, s, cache_key=load_cache_key)),
            segment=named(bind(segment, s, cache_key=segment_cache_key)),
            detect=named(bind(detect, s, cache_key=detect_cache_key)),
            depth=named(bind(depth, s, cache_key=depth_cache_key)),
            merge=named(bind(merge_ssr, s, cache_key=merge_cache_key)),
            decompose=named(bind(decompose, s, cache_key=decompose_cache_key)),
            reason=named(bind(reason_step, s, cache_key=reason_step_cache_key)),
            inpaint=named(bind(inpaint_step, s, cache_key=inpaint_cache_key)),
            finalize=named(bind(finalize, s, cache_key=finalize_cache_key)),
        )


class StageRecorder:
    """Calls stage tasks for one image: each call's time, whether Prefect took it from the cache,
    and a failure raised as :class:`StageFailed` naming the stage. Task runs are named after
    ``image_id``; before each stage, a stop request (SIGTERM, cancellation) raises
    :class:`tasks.progress.RunStopped`."""

    def __init__(self, image_id: str | None = None) -> None:
        self.image_id = image_id
        self.timings: dict[str, float] = defaultdict(float)
        self.counts: dict[str, list[int]] = {}  # stage -> [hits, calls], in first-call order

    def __call__(self, stage: str, task: Task, **params: Any) -> Any:
        check_stop()
        t0 = time.perf_counter()
        token = current_image.set(self.image_id)
        try:
            state = task(**params, return_state=True)
        finally:
            current_image.reset(token)
        self.timings[stage] += time.perf_counter() - t0
        count = self.counts.setdefault(stage, [0, 0])
        count[1] += 1
        if state.name == "Cached":
            count[0] += 1
        try:
            return outcome(state)
        except BaseException as e:  # noqa: BLE001
            raise StageFailed(stage, e) from e

    @property
    def cache_hits(self) -> int:
        return sum(h for h, _ in self.counts.values())

    @property
    def task_runs(self) -> int:
        return sum(c for _, c in self.counts.values())

    def cached_stages(self) -> dict[str, StageCount]:
        return {k: StageCount(hits=h, calls=c) for k, (h, c) in self.counts.items()}

    def stage_seconds(self) -> dict[str, float]:
        return {f"t_{stage}": round(self.timings.get(stage, 0.0), 4) for stage in STAGES}


@task(name="edit-one-image", persist_result=False)
def in_worker(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` as one task of its own, so a distributed task runner (Dask) can place
    it on a worker; the stage tasks it calls run (and hit the same caches) inside that worker."""
    return fn(*args, **kwargs)
