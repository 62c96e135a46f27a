"""Images in flight: a chunk with several images in progress at once gives the same rows and the
same bytes as one image at a time, and one image's failure leaves the others' outputs alone.

Real parts only: Prefect's engine and API (the session's test harness), tiny random-weight models
through their real classes, CIEBench photos, a truncated PNG as the bad input.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cielr_core import models
from cielr_core.manifest import write_manifest
from cli.commands.demo import write_demo_inputs
from flows import inflight
from tasks import runtime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import byte_identical  # noqa: E402  (bench/byte_identical.py: the artifact-by-artifact comparison)


def _config(models_dir: Path, window: int) -> dict:
    return {"models_dir": str(models_dir),
            "orchestration": {"retry_delay_s": 0.0, "retry_jitter_factor": 0.0, "max_in_flight": window}}


def _rows(uri: str) -> list[dict]:
    return pq.read_table(uri).to_pylist()


def _comparable(row: dict, store: str) -> dict:
    """A results row without what differs from run to run (timings) or names the store."""
    out = {}
    for k, v in row.items():
        if k.startswith("t_") or k in ("seconds", "latency_s"):
            continue
        out[k] = v.replace(store, "<store>") if isinstance(v, str) else v
    return out


def _load_overlap(flow_run_id: str) -> int:
    """Most `load` task runs of the run's chunks in progress at one moment (one per image)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter

    async def go():
        async with get_client() as c:
            chunks = await c.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[uuid.UUID(flow_run_id)])))
            assert chunks, "no chunk subflow found"
            runs = await c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [f.id for f in chunks]}),
                                          task_run_filter=TaskRunFilter())
            return [r for r in runs if r.name.startswith("load") and r.start_time and r.end_time]

    loads = asyncio.run(go())
    events = sorted([(r.start_time.timestamp(), 1) for r in loads] + [(r.end_time.timestamp(), -1) for r in loads])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, ciebench_dir):
    folder = tmp_path_factory.mktemp("inflight")
    _, rows = write_demo_inputs(folder, str(ciebench_dir), 2)
    bad = folder / "images" / "truncated.png"
    bad.write_bytes(Path(rows[0]["image_uri"]).read_bytes()[:300])
    good = write_manifest(rows, str(folder / "good.parquet"))
    # the bad image in the middle of the good ones, in flight beside them
    mixed_rows = rows[:1] + [{"image_id": "truncated", "image_uri": str(bad), "instruction": "remove the cup"}] + rows[1:]
    mixed = write_manifest(mixed_rows, str(folder / "mixed.parquet"))
    return good, mixed, rows


def test_eight_in_flight_gives_the_rows_and_bytes_of_one_at_a_time(prefect_harness, tiny_models_dir, inputs,
                                                                    tmp_path):
    from flows.edit_dataset import edit_dataset, results_uri

    good, mixed, rows = inputs
    one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
    models.clear()
    runtime.reset()
    uri1 = edit_dataset(manifest_uri=good, store=one, profile="tiny", config=_config(tiny_models_dir, 1))
    # the truncated row fails the run (results written all the same)
    uri8 = results_uri(edit_dataset(manifest_uri=mixed, store=eight, profile="tiny", config=_config(tiny_models_dir, 8),
                                    return_state=True))

    rows1, rows8 = _rows(uri1), _rows(uri8)
    assert [r["image_id"] for r in rows8] == [rows[0]["image_id"], "truncated", rows[1]["image_id"]], \
        "rows come back in manifest order"
    bad = next(r for r in rows8 if r["image_id"] == "truncated")
    assert bad["status"] == "failed" and bad["failed_stage"] == "load" and "truncated.png" in bad["error"]
    good8 = [r for r in rows8 if r["image_id"] != "truncated"]
    assert all(r["status"] in ("ok", "no_target") for r in good8), [(r["image_id"], r["error"]) for r in good8]
    assert [_comparable(r, eight) for r in good8] == [_comparable(r, one) for r in rows1]
    # every artifact of the good images, byte for byte (traces without timings); the bad image left none
    problems = byte_identical.compare(Path(one), Path(eight))
    assert [p for p in problems if not p.startswith("results row truncated:")] == []
    run_id = uri8.rstrip("/").split("/")[-2]
    assert _load_overlap(run_id) > 1, "the images were not in flight at the same time"


def test_window_order_errors_and_bound():
    """run_in_flight: input order back, an exception is that item's row only, never more than the
    window in progress, and the caller's context variables seen in every call."""
    import contextvars

    var = contextvars.ContextVar("var", default="unset")
    var.set("flow")
    lock = threading.Lock()
    live = [0, 0]  # now, most

    def fn(i: int) -> str:
        with lock:
            live[0] += 1
            live[1] = max(live[1], live[0])
        time.sleep(0.02 * (5 - i % 5))  # later items finish first
        with lock:
            live[0] -= 1
        if i == 3:
            raise ValueError("bad item")
        return f"{i}:{var.get()}"

    done: list[int] = []
    out = inflight.run_in_flight(fn, list(range(10)), 3, on_error=lambda i, e: f"{i}:failed:{e}",
                                 on_done=lambda i, r: done.append(i))
    assert out == [f"{i}:flow" if i != 3 else "3:failed:bad item" for i in range(10)]
    assert sorted(done) == list(range(10))
    assert live[1] == 3


def test_default_window_by_device():
    import torch

    from cielr_core.config import load_settings

    s = load_settings(profile="default")
    assert s.orchestration.max_in_flight is None
    expected = inflight.GPU_DEFAULT if torch.cuda.is_available() else inflight.CPU_DEFAULT
    assert inflight.window(s) == expected
    s.perception.device = "cpu"
    assert inflight.window(s) == inflight.CPU_DEFAULT
    s.orchestration.max_in_flight = 5
    assert inflight.window(s) == 5
