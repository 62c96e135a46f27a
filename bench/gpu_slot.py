"""What GPU exclusivity costs per stage, through a real `prefect server` and a process worker.

Three ways to keep one worker's GPU to one run at a time, measured on no-op GPU stages bound with
the real run options (tasks.options.bind: cache key, results persisted to the store, retries,
timeout):

- ``untagged``: no guard at all (the floor);
- ``tag-limit``: every GPU-stage task run carries a tag that has a tag concurrency limit of 1 (the
  old mechanism: one slot acquisition per task run);
- ``tag-no-limit``: the tag without a limit (a slot request per task run that finds no limit);
- ``chunk-slot``: stage tasks untagged, the chunk holds one slot of a global concurrency limit of 1
  for all its images (tasks.gpu.gpu_slot, what edit_dataset does now).

Then the same no-op dataset run (bench/orchestration.py's no-op stages inside the real
``edit_dataset``) run directly and as a deployment picked up by ``prefect worker start --type
process``: the flow run's own duration (server start -> end time) of each, old tagged stages vs the
chunk slot.

    python bench/gpu_slot.py                       # SQLite server
    python bench/gpu_slot.py --database postgres   # a private PostgreSQL cluster under the server
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prefect import flow, task  # noqa: E402

GPU_STAGES = ("segment", "detect", "depth", "decompose", "reason", "inpaint")
TAG = "gpu:bench-tag"
SLOT = "gpu:bench-slot"
MODES = ("untagged", "tag-no-limit", "tag-limit", "chunk-slot")


@task(name="gpu-stage")
def gpu_stage(image: int, stage: str, salt: str) -> dict:
    return {"image": image, "stage": stage}


@flow(name="gpu-slot-stage-cost")
def stage_cost(mode: str, images: int, store: str) -> dict:
    from cielr_core.config import load_settings
    from tasks.gpu import gpu_slot
    from tasks.keys import short_key
    from tasks.options import bind

    s = load_settings(profile="tiny", overrides={"store": {"url": store}, "orchestration": {"gpu_tag": SLOT}})
    salt = uuid.uuid4().hex  # every run cold
    t = bind(gpu_stage, s, cache_key=lambda p: short_key(f"bench-{p['salt']}-{p['image']}-{p['stage']}"))
    if mode.startswith("tag"):
        t = t.with_options(tags=[TAG])
    per_call: list[float] = []
    t0 = time.perf_counter()
    with gpu_slot(s) if mode == "chunk-slot" else nullcontext():
        t_in = time.perf_counter()
        for i in range(images):
            for stage in GPU_STAGES:
                c0 = time.perf_counter()
                state = t(image=i, stage=stage, salt=salt, return_state=True)
                per_call.append(time.perf_counter() - c0)
                assert state.is_completed(), state
        t_body = time.perf_counter()
    wall = time.perf_counter() - t0
    return {"mode": mode, "calls": len(per_call), "wall_s": wall, "acquire_s": t_in - t0,
            "release_s": wall - (t_body - t0), "mean_ms": 1000 * statistics.mean(per_call),
            "median_ms": 1000 * statistics.median(per_call), "max_ms": 1000 * max(per_call)}


@flow(name="gpu-slot-noop-dataset")
def noop_dataset(images: int, workdir: str, tagged: bool = False) -> dict:
    """The real edit_dataset over ``images`` rows with no-op stages; ``tagged`` puts the old per-task
    tag (with its limit) back on the GPU stages."""
    from bench.orchestration import _noop_stages
    from cielr_core.manifest import write_manifest
    from flows.edit_dataset import edit_dataset
    from tasks import stages

    gpu = {"segment", "detect", "depth", "decompose", "reason", "inpaint"}

    def for_settings(cls, s, ref=None):
        st = _noop_stages(s, ref)
        if tagged:
            for n in gpu:
                setattr(st, n, getattr(st, n).with_options(tags=[TAG]))
        return st

    stages.Stages.for_settings = classmethod(for_settings)
    d = Path(workdir) / uuid.uuid4().hex
    (d / "images").mkdir(parents=True)
    rows = []
    for i in range(images):
        p = d / "images" / f"{i:04d}.png"
        p.write_bytes(b"not read: stages are no-ops")
        rows.append({"image_id": f"img-{i:04d}", "image_uri": str(p), "instruction": f"remove thing {i}"})
    write_manifest(rows, str(d / "manifest.parquet"))
    t0 = time.perf_counter()
    uri = edit_dataset(manifest_uri=str(d / "manifest.parquet"), store=str(d / "store"), profile="tiny",
                       config={"orchestration": {"gpu_tag": "" if tagged else SLOT}})
    return {"uri": uri, "edit_dataset_s": time.perf_counter() - t0}


def _setup_limits(mode: str) -> None:
    import asyncio

    from prefect import get_client

    from deployments.helper import ensure_gpu_limit

    async def go():
        async with get_client() as client:
            try:
                await client.delete_concurrency_limit_by_tag(TAG)
            except Exception:  # noqa: BLE001 - none yet
                pass
            if mode in ("tag-limit", "tagged"):
                await client.create_concurrency_limit(tag=TAG, concurrency_limit=1)

    asyncio.run(go())
    asyncio.run(ensure_gpu_limit(SLOT, 1))


def _flow_run_seconds(flow_run_id: str) -> float:
    from prefect import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def go():
        async with get_client() as client:
            fr = await client.read_flow_run(uuid.UUID(flow_run_id))
            return (fr.end_time - fr.start_time).total_seconds(), fr.state.type.value

    secs, state = run_coro_as_sync(go())
    assert state == "COMPLETED", state
    return secs


def child(args) -> dict:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if args.child == "stage":
        _setup_limits(args.mode)
        flow(lambda: None, name="warm-up")()
        stage_cost(args.mode, 2, args.store)  # warm: imports, first task run
        return stage_cost(args.mode, args.images, args.store)
    if args.child == "direct":
        _setup_limits("tagged" if args.tagged else "chunk-slot")
        state = noop_dataset(args.images, args.store, args.tagged, return_state=True)
        return {"flow_run_s": _flow_run_seconds(str(state.state_details.flow_run_id)), **state.result()}
    raise SystemExit(f"unknown child {args.child}")


def _child(env: dict, *extra: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        sys.exit(f"{extra} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def deployment_run(env: dict, images: int, workdir: str, tagged: bool) -> dict:
    """Deploy noop_dataset to a process pool (our template), start one run, let a process worker run it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # this process loaded Prefect's settings at import, before the server existed: point it there
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return _deployment_run(env, images, workdir, tagged)


def _deployment_run(env: dict, images: int, workdir: str, tagged: bool) -> dict:
    import asyncio

    from prefect.deployments import run_deployment

    from deployments.helper import ensure_pool

    pool = "bench-gpu-slot"
    os.environ.update(env)
    asyncio.run(ensure_pool(pool, "process"))
    _setup_limits("tagged" if tagged else "chunk-slot")
    src = noop_dataset.from_source(source=str(REPO), entrypoint="bench/gpu_slot.py:noop_dataset")
    src.deploy(name="bench", work_pool_name=pool, build=False, push=False, print_next_steps=False,
               job_variables={"env": {"PREFECT_LOGGING_LEVEL": "WARNING", "CUDA_VISIBLE_DEVICES": ""}})
    fr = run_deployment("gpu-slot-noop-dataset/bench", parameters={"images": images, "workdir": workdir,
                                                                    "tagged": tagged}, timeout=0)
    t0 = time.perf_counter()
    worker = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--run-once",
                             "--type", "process"], capture_output=True, text=True, cwd=workdir, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    try:
        secs = _flow_run_seconds(str(fr.id))
    except AssertionError as e:
        sys.exit(f"deployment run did not complete ({e}):\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}")
    return {"flow_run_s": secs, "worker_wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--images", type=int, default=10, help="images per stage-cost run (6 GPU stages each)")
    ap.add_argument("--dataset-images", type=int, default=8, help="rows of the no-op dataset run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--tagged", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a)))
        return
    from bench.services import postgres, prefect_server

    report: dict = {"machine": f"{platform.node()}, {os.cpu_count()} CPU cores", "database": a.database,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": os.getloadavg()[0]}
    with ExitStack() as stack:
        db = stack.enter_context(postgres()) if a.database == "postgres" else None
        d = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cielr-bench-slot-")))
        server = stack.enter_context(prefect_server(d / "server", db))
        env = {**os.environ, **server.env}
        stage = {}
        for mode in MODES:
            stage[mode] = _child(env, "--child", "stage", "--mode", mode, "--images", str(a.images),
                                 "--store", str(d / "store"))
            print(json.dumps(stage[mode]), flush=True)
        base = stage["untagged"]["mean_ms"]
        for mode, r in stage.items():
            extra = r["acquire_s"] + r["release_s"] if mode == "chunk-slot" else 0.0
            r["exclusivity_ms_per_stage"] = round((r["wall_s"] - stage["untagged"]["wall_s"]) * 1000 / r["calls"], 1)
            r["over_untagged_mean_ms"] = round(r["mean_ms"] - base, 1)
            r["slot_acquire_release_ms"] = round(extra * 1000, 1)
        report["stage_cost"] = stage
        runs = {}
        for tagged in (True, False):
            key = "tagged" if tagged else "chunk-slot"
            direct = _child(env, "--child", "direct", "--images", str(a.dataset_images), "--store", str(d / "data"),
                            *(["--tagged"] if tagged else []))
            dep = deployment_run(env, a.dataset_images, str(d / "data"), tagged)
            runs[key] = {"direct_flow_run_s": round(direct["flow_run_s"], 2),
                         "deployment_flow_run_s": round(dep["flow_run_s"], 2),
                         "deployment_worker_wall_s": round(dep["worker_wall_s"], 2),
                         "deployment_over_direct": round(dep["flow_run_s"] / direct["flow_run_s"], 2)}
            print(key, json.dumps(runs[key]), flush=True)
        report["dataset_runs"] = runs
    report["load_end"] = os.getloadavg()[0]
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
