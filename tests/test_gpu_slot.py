"""GPU exclusivity paid once per chunk: a chunk holds one slot of a Prefect global concurrency limit
(tasks.gpu.gpu_slot) for all its images, stage tasks carry no tag, and inside one process the
images in flight share a device through cielr_core.devices.device_lock.

The chunk tests run two real chunk flow runs at once on the session's ephemeral API, with a real
global concurrency limit; the rows' work is replaced by a probe that records which chunks are
inside it together (no model runs, so the tests stay fast).
"""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager

import pytest

from cielr_core.devices import device_lock


def test_device_lock_serialises_one_gpu_and_not_another_or_the_cpu():
    held = threading.Event()
    release = threading.Event()

    def holder():
        with device_lock("cuda:0"):
            with device_lock("cuda:0"):  # reentrant: a nested forward in the same thread goes on
                held.set()
                release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    try:
        assert device_lock("cuda:0").acquire(blocking=False) is False  # another thread waits for cuda:0
        other = device_lock("cuda:1")
        assert other.acquire(blocking=False) is True  # another GPU is free
        other.release()
        with device_lock("cpu"):  # CPU: no lock at all
            pass
        import torch

        assert device_lock(torch.device("cuda", 0)) is device_lock("cuda:0")
    finally:
        release.set()
        t.join(10)
    assert device_lock("cuda:0").acquire(blocking=False) is True
    device_lock("cuda:0").release()


def test_stage_tasks_carry_no_tag(tiny_settings):
    """No per-task slot: a tag with a concurrency limit costs a slot request per task run."""
    from tasks.stages import Stages

    stages = Stages.for_settings(tiny_settings)
    for name in ("load", "segment", "detect", "depth", "merge", "decompose", "reason", "inpaint", "finalize"):
        assert not getattr(stages, name).tags, name


def _create_limit(name: str, limit: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))


def _active_slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def _two_chunks_at_once(monkeypatch, tiny_settings, limit: int) -> dict:
    """Two chunk flow runs started together under a limit of ``limit`` slots. The first row of each
    chunk waits until the other chunk is at least asking for its slot, then waits (1 s at most)
    for the other chunk's first row to be running too. Returns what the probe saw: the most chunks
    with a row running at once, how many first rows met, the limit's busy slots seen from inside
    the rows and after both chunks."""
    import flows.edit_dataset as ed
    from tasks import gpu, runtime
    from tasks.refs import ResultRow

    name = f"gpu:test-{uuid.uuid4().hex[:8]}"
    _create_limit(name, limit)
    s = tiny_settings.model_copy(update={"orchestration": tiny_settings.orchestration.model_copy(
        update={"gpu_tag": name})})
    ref = runtime.settings_ref(s)
    asking = {"a": threading.Event(), "b": threading.Event()}
    together = threading.Barrier(2, timeout=1.0)
    seen = {"active": {"a": 0, "b": 0}, "max_active": 0, "met": 0, "slots_inside": []}
    guard = threading.Lock()

    real_slot = gpu.gpu_slot

    @contextmanager
    def watched_slot(settings):
        chunk = threading.current_thread().name[-1]
        asking[chunk].set()
        with real_slot(settings):
            yield

    def probe(stages, r):
        chunk, index = r["image_id"][0], r["image_id"][1:]
        other = "b" if chunk == "a" else "a"
        with guard:
            seen["active"][chunk] += 1
            seen["max_active"] = max(seen["max_active"], sum(1 for v in seen["active"].values() if v))
        try:
            seen["slots_inside"].append(_active_slots(name))
            if index == "0":  # the first row of each chunk looks for the other chunk's first row
                asking[other].wait(60)
                try:
                    together.wait()
                    with guard:
                        seen["met"] += 1
                except threading.BrokenBarrierError:
                    pass
        finally:
            with guard:
                seen["active"][chunk] -= 1
        return ResultRow(image_id=r["image_id"], image_uri=r["image_uri"], instruction=r["instruction"], status="ok")

    monkeypatch.setattr(ed, "gpu_slot", watched_slot)
    monkeypatch.setattr(ed, "_run_row", probe)
    out: dict[str, list] = {}

    def chunk(c: str) -> None:
        rows = [{"image_id": f"{c}{i}", "image_uri": f"/nowhere/{c}{i}.png", "instruction": "remove it"}
                for i in range(2)]
        out[c] = ed.process_chunk(rows, ref)

    threads = [threading.Thread(target=chunk, args=(c,), name=f"chunk-{c}") for c in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(out) == ["a", "b"] and all(len(v) == 2 and all(r.status == "ok" for r in v) for v in out.values())
    seen["slots_after"] = _active_slots(name)
    return seen


def test_a_gpu_limit_of_one_keeps_two_chunks_apart(prefect_harness, monkeypatch, tiny_settings):
    seen = _two_chunks_at_once(monkeypatch, tiny_settings, limit=1)
    assert seen["max_active"] == 1 and seen["met"] == 0, seen
    assert set(seen["slots_inside"]) == {1}, seen  # each chunk's rows ran while it held the one slot
    assert seen["slots_after"] == 0, seen  # released when the chunk ended


def test_a_gpu_limit_of_two_lets_two_chunks_share(prefect_harness, monkeypatch, tiny_settings):
    """The same probe sees both chunks inside at once when the limit allows it (so the test above can
    fail)."""
    seen = _two_chunks_at_once(monkeypatch, tiny_settings, limit=2)
    assert seen["max_active"] == 2 and seen["met"] == 2, seen
    assert seen["slots_after"] == 0, seen


def test_no_limit_of_that_name_runs_the_chunk_unguarded(prefect_harness, tiny_settings):
    """Local runs where nobody created the limit: the chunk runs (one cheap lookup), nothing waits."""
    from prefect import flow

    from tasks.gpu import gpu_slot

    s = tiny_settings.model_copy(update={"orchestration": tiny_settings.orchestration.model_copy(
        update={"gpu_tag": f"gpu:absent-{uuid.uuid4().hex[:8]}"})})

    @flow(name="gpu-slot-absent")
    def guarded() -> str:
        with gpu_slot(s):
            return "ran"

    assert guarded() == "ran"


@pytest.mark.parametrize("limit", [1, 3])
def test_cielr_deploy_creates_or_updates_the_global_limit(prefect_harness, limit):
    import asyncio

    from deployments.helper import ensure_gpu_limit

    name = f"gpu:deploy-{uuid.uuid4().hex[:8]}"
    assert asyncio.run(ensure_gpu_limit(name, 2)) == "created"
    assert asyncio.run(ensure_gpu_limit(name, limit)) == ("updated" if limit != 2 else "exists")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        got = client.read_global_concurrency_limit_by_name(name)
    assert got.limit == limit and got.active


def test_stage_tasks_in_worker_threads_send_no_per_run_timeout_warning(prefect_harness, tiny_settings, caplog):
    """Images in flight call stage tasks from threads; Prefect's per-run notice that a timeout cannot
    interrupt a thread (a log record sent to the API per stage) is dropped, other task logs are not."""
    import contextvars
    import logging

    from prefect import flow, get_run_logger, task

    from tasks.options import bind

    @task(name="noisy")
    def noisy(i: int) -> int:
        get_run_logger().warning("stage %d says something", i)
        return i

    t = bind(noisy, tiny_settings, cache_key=None)
    assert t.timeout_seconds

    @flow(name="timeout-notice")
    def run() -> list[int]:
        out: list[int] = []
        th = [threading.Thread(target=contextvars.copy_context().run, args=(lambda i=i: out.append(t(i=i)),))
              for i in range(2)]
        for x in th:
            x.start()
        for x in th:
            x.join(60)
        return sorted(out)

    with caplog.at_level(logging.WARNING):
        assert run() == [0, 1]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("says something" in m for m in messages) == 2, messages
    assert not [m for m in messages if "running in a worker thread" in m], messages
