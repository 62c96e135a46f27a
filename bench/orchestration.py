"""Prefect overhead of the whole per-image DAG, with near-zero-cost stages.

Every stage task of ``tasks.stages.Stages`` is replaced by a task that does (almost) nothing but
returns a reference of the right shape, bound with the SAME run options as the real stages (cache
key function, result storage on the artifact store, retries, timeout). So the figures are
what Prefect and our orchestration cost per image: task-run bookkeeping against the API, cache-key
computation, result persistence, chunk subflows, artifacts and results.parquet.

    python bench/orchestration.py --sizes 100 1000          # cold run, then a fully cached re-run
    python bench/orchestration.py --sizes 100 --no-write    # just print
    python bench/orchestration.py --api ephemeral server-postgres --sizes 100 1000

Each size runs in its own subprocesses (fresh store; with the ephemeral API a fresh database), so
peak RSS is per size. ``--api server-postgres`` starts a private PostgreSQL cluster and a
`prefect server` on it (bench/services.py) and runs every size against that server. Results are
appended to docs/benchmarks.md unless --no-write.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _noop_stages(settings, ref=None):
    """Stages whose bodies cost ~nothing, with the real stages' options (cache, storage, retries)."""
    from prefect import task
    from pydantic import BaseModel

    from cielr_core.canonical import sha256_json
    from cielr_core.plan import EditStep
    from tasks import keys, runtime
    from tasks.options import bind
    from tasks.refs import (
        Decomposition,
        DepthRef,
        DetectionsRef,
        EditRef,
        ImageRef,
        Outputs,
        SegmentRef,
        SSRRef,
        StepRef,
    )
    from tasks.stages import Stages

    def plain(v):
        if isinstance(v, BaseModel):
            return v.model_dump(mode="json")
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    def key(stage):
        return lambda p: keys.short_key(f"{stage}-" + sha256_json({k: plain(v) for k, v in p.items() if k != "settings"}))

    @task(name="load-image")
    def load(image_uri: str, settings) -> ImageRef:
        sha = sha256_json(image_uri)
        return ImageRef(sha=sha, key=keys.image_key(sha), width=64, height=48)

    @task(name="segment")
    def segment(image: ImageRef, settings, sam2_overrides=None) -> SegmentRef:
        return SegmentRef(key=keys.segment_key(image.sha), n_masks=3)

    @task(name="detect")
    def detect(image: ImageRef, settings, extra_queries=None) -> DetectionsRef:
        return DetectionsRef(key=keys.detect_key(image.sha), n_detections=3)

    @task(name="depth")
    def depth(image: ImageRef, settings) -> DepthRef:
        return DepthRef(key=keys.depth_key(image.sha))

    @task(name="merge-ssr")
    def merge(image: ImageRef, seg, det, dep, settings) -> SSRRef:
        return SSRRef(prefix=image.sha, digest=image.sha, n_objects=3)

    @task(name="decompose")
    def decompose(ssr: SSRRef, instruction: str, settings, image: ImageRef | None = None) -> Decomposition:
        return Decomposition(subtasks=[instruction], trace_key=keys.decompose_trace_key(ssr.digest))

    @task(name="reason-step")
    def reason(image: ImageRef, ssr: SSRRef, subtask: str, instruction: str, settings,
               query_objects: list[str] | None = None) -> StepRef:
        step = EditStep(subtask=subtask, operation="remove", target_ids=[1], ssr_digest=ssr.digest)
        return StepRef(step=step, ssr=ssr, trace_key=keys.step_trace_key(ssr.digest))

    @task(name="inpaint-step")
    def inpaint(image: ImageRef, step: StepRef, settings, seed: int, instruction: str | None = None) -> EditRef:
        return EditRef(image=image.model_copy(update={"sha": sha256_json([image.sha, seed])}),
                       mask_key=keys.edit_mask_key(image.sha), skipped=False, backend="noop")

    @task(name="finalize")
    def finalize(image, final_image, ssr, instruction, steps, edits, decompose_trace, settings, seed) -> Outputs:
        prefix = image.sha
        return Outputs(prefix=prefix, status="ok", n_steps=len(steps), n_edited_steps=len(steps),
                       **{f"{n}_uri": keys.output_key(prefix, n) for n in keys.OUTPUT_FILES})

    fns = dict(load=load, segment=segment, detect=detect, depth=depth, merge=merge, decompose=decompose,
               reason=reason, inpaint=inpaint, finalize=finalize)
    return Stages(settings=settings, ref=ref or runtime.settings_ref(settings),
                  **{n: bind(f, settings, cache_key=key(n)) for n, f in fns.items()})


def _busy_cpu_s() -> float:
    """CPU seconds every process on the machine has used (user + system + nice + irq), from /proc/stat."""
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "system", "nice", "irq", "softirq", "steal"))


def child(n: int, workdir: Path, chunk_size: int, phase: str, in_flight: int | None = None) -> dict:
    """Runs in a fresh process: the cold run over n rows, or (phase "cached") the re-run of the same
    manifest on the same store and Prefect database, as a later nightly run would."""
    import resource
    import threading

    import psutil

    if not os.environ.get("PREFECT_API_URL"):  # ephemeral API: its SQLite database lives in the workdir
        os.environ["PREFECT_HOME"] = str(workdir / "prefect-home")
        # a loaded machine can take minutes to start the ephemeral server
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    from cielr_core.manifest import write_manifest
    from flows.edit_dataset import edit_dataset
    from tasks import stages

    stages.Stages.for_settings = classmethod(lambda cls, s, ref=None: _noop_stages(s, ref))
    import cielr_core.preflight as preflight

    preflight.check_models = lambda *a, **k: None  # no-op stages need no model
    images = workdir / "images"
    manifest = str(workdir / "manifest.parquet")
    if phase == "cold":
        images.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            (images / f"{i:05d}.png").write_bytes(b"not read: stages are no-ops")
            rows.append({"image_id": f"img-{i:05d}", "image_uri": str(images / f"{i:05d}.png"),
                         "instruction": f"remove thing {i}"})
        write_manifest(rows, manifest)
    store = str(workdir / "store")

    proc = psutil.Process()
    samples: list[int] = []
    stop = threading.Event()

    t_start = [time.perf_counter()]
    results_dir = Path(store) / "prefect"

    def sample():
        last = 0.0
        while not stop.is_set():
            samples.append(proc.memory_info().rss)
            now = time.perf_counter()
            if now - last >= 30:  # a progress line for long runs: elapsed, RSS, stage results written
                last = now
                try:
                    written = sum(1 for _ in os.scandir(results_dir))
                except OSError:
                    written = 0
                print(json.dumps({"elapsed_s": round(now - t_start[0]), "rss_mb": round(samples[-1] / 2**20),
                                  "task_results": written, "images_done_approx": written // 9,
                                  "load_1m": round(os.getloadavg()[0], 1)}), file=sys.stderr, flush=True)
            stop.wait(0.25)

    # warm the API (the ephemeral one starts here) so its start-up is not billed to the first run
    from prefect import flow

    flow(lambda: None, name="warm-up")()
    rss_start = proc.memory_info().rss
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    cpu0, busy0 = proc.cpu_times(), _busy_cpu_s()
    t0 = t_start[0] = time.perf_counter()
    config = {"orchestration": {"max_in_flight": in_flight}} if in_flight else None
    uri = edit_dataset(manifest_uri=manifest, store=store, chunk_size=chunk_size, config=config)
    wall = time.perf_counter() - t0
    cpu1, busy1 = proc.cpu_times(), _busy_cpu_s()
    client_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    # everything else on the machine: the API server (the ephemeral one is this process's child), its
    # database, and whatever else ran (the load average says how much that was)
    other_cpu = max(0.0, (busy1 - busy0) - client_cpu)
    stop.set()
    t.join()
    from storage import ArtifactStore

    st = ArtifactStore(store)
    rows = st.get_table(st.key_for(uri)).to_pylist()
    return {
        "phase": phase,
        "n": n,
        "wall_s": round(wall, 2),
        "per_image_s": round(wall / n, 4),
        "ok_rows": sum(r["status"] == "ok" for r in rows),
        "cache_hits": sum(r["cache_hits"] for r in rows),
        "task_runs": sum(r["task_runs"] for r in rows),
        "rss_start_mb": round(rss_start / 2**20),
        "rss_end_mb": round(proc.memory_info().rss / 2**20),
        "rss_peak_mb": round(max(samples) / 2**20) if samples else None,
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "client_cpu_per_image_s": round(client_cpu / n, 4),
        "other_cpu_per_image_s": round(other_cpu / n, 4),
        "in_flight": in_flight or "default",
    }


def machine() -> str:
    import psutil

    return f"{platform.node()}: {psutil.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, no GPU used"


def write_section(results: list[dict], chunk_size: int) -> None:
    import prefect

    lines = [
        "",
        f"## Orchestration overhead (bench/orchestration.py), {dt.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Python {platform.python_version()}, Prefect {prefect.__version__}, local store, "
        f"chunk size {chunk_size}. All nine stage tasks per image are no-ops bound with the real run options "
        "(content cache key, results persisted to the store, retries, timeout), so this is the orchestration "
        "cost alone; real stage compute comes on top. API: ephemeral (in-process default, SQLite), or a "
        "dedicated `prefect server` on SQLite or PostgreSQL (a private cluster started by the benchmark).",
        "",
        "The cached re-run is a new process on the same store and Prefect database (as a later nightly run); "
        "wall times exclude the API's start-up.",
        "",
        "CPU s/image: the client process's CPU + all other CPU on the machine (the API server, its database, "
        "anything else running), per image, cold / cached.",
        "",
        "| API | images | images in flight | rows ok | cold run s | cold s/image | cached re-run s | cached s/image | "
        "cache hits | CPU s/image client + other, cold / cached | "
        "client RSS start / after cold / peak MB | server RSS cold / cached MB | load avg (1 min) cold / cached |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['api']} | {r['n']} | {r['in_flight']} | {r['ok']} | {r['cold_s']} | {r['cold_per_image_s']} | "
                     f"{r['cached_s']} | {r['cached_per_image_s']} | {r['cached_hits']} | {r['cpu']} | {r['rss_start_mb']} / "
                     f"{r['rss_after_cold_mb']} / {r['rss_peak_mb']} | {r['server_rss_mb']} | {r['load']} |")
    path = REPO / "docs" / "benchmarks.md"
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {path}")


API_KINDS = ("ephemeral", "server-sqlite", "server-postgres")


@contextlib.contextmanager
def api_env(api: str):
    """(environment for the child processes, pid of the server process or None)."""
    if api == "ephemeral":
        yield {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, None
        return
    from bench.services import postgres, prefect_server

    with contextlib.ExitStack() as stack:
        db = stack.enter_context(postgres()) if api == "server-postgres" else None
        d = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cielr-bench-server-")))
        server = stack.enter_context(prefect_server(d, db))
        yield {**os.environ, **server.env}, server.pid


def _server_rss_mb(pid: int | None) -> int | None:
    if pid is None:
        return None
    import psutil

    try:
        p = psutil.Process(int(pid))
        return round(sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20)
    except psutil.Error:
        return None


def run_size(n: int, chunk_size: int, api: str, env: dict, server_pid, phases_to_run=("cold", "cached"),
             log_dir: Path | None = None, in_flight: int | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="cielr-bench-orch-") as d:
        phases = {}
        for phase in phases_to_run:
            err_path = (log_dir or Path(d)) / f"orchestration-{api}-{n}-{phase}.log"
            with open(err_path, "w") as err:
                out = subprocess.run([sys.executable, __file__, "--child", str(n), "--workdir", d, "--phase", phase,
                                      "--chunk-size", str(chunk_size), *(["--in-flight", str(in_flight)] if in_flight else [])],
                                     stdout=subprocess.PIPE, stderr=err, text=True,
                                     cwd=REPO, env=env)
            if out.returncode != 0:
                sys.exit(f"size {n} ({api}, {phase}) failed:\n{err_path.read_text()[-4000:]}")
            phases[phase] = json.loads(out.stdout.strip().splitlines()[-1])
            phases[phase]["server_rss_mb"] = _server_rss_mb(server_pid)
            phases[phase]["load_avg_1m"] = round(os.getloadavg()[0], 1)
            print(json.dumps({"api": api, **phases[phase]}), flush=True)
    c, w = phases["cold"], phases.get("cached")
    if w is None:  # cold run only
        w = {k: "-" for k in c}
        w["wall_s"] = None
    return {
        "api": api, "n": n, "cold_s": c["wall_s"], "cold_per_image_s": c["per_image_s"], "cached_s": w["wall_s"],
        "cached_per_image_s": w["per_image_s"],
        "cached_hits": f"{w['cache_hits']}/{w['task_runs']}", "ok": f"{c['ok_rows']}/{n}",
        "rss_start_mb": c["rss_start_mb"], "rss_after_cold_mb": c["rss_end_mb"], "rss_peak_mb": c["rss_peak_mb"],
        "server_rss_mb": f"{c['server_rss_mb']} / {w['server_rss_mb']}" if c.get("server_rss_mb") else "-",
        "load": f"{c['load_avg_1m']} / {w['load_avg_1m']}",
        "cpu": f"{c['client_cpu_per_image_s']} + {c['other_cpu_per_image_s']} / "
               f"{w['client_cpu_per_image_s']} + {w['other_cpu_per_image_s']}",
        "in_flight": c["in_flight"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--chunk-size", type=int, default=50)
    ap.add_argument("--api", nargs="+", default=["ephemeral"], choices=API_KINDS,
                    help="ephemeral: the in-process default (SQLite); server-sqlite / server-postgres: a dedicated "
                    "`prefect server` (on PostgreSQL, a private cluster started here)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--cold-only", action="store_true", help="skip the cached re-run (for the longest sizes)")
    ap.add_argument("--log-dir", help="keep each child's stderr (progress lines every 30 s) here")
    ap.add_argument("--in-flight", type=int, nargs="+", default=[0],
                    help="orchestration.max_in_flight values to run (0: the device default, 2 on CPU)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--phase", default="cold", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, Path(a.workdir), a.chunk_size, a.phase, a.in_flight[0] or None)))
        return
    results = []
    for api in a.api:
        with api_env(api) as (env, server_pid):
            for n in a.sizes:
                for w in a.in_flight:
                    results.append(run_size(n, a.chunk_size, api, env, server_pid,
                                            ("cold",) if a.cold_only else ("cold", "cached"),
                                            Path(a.log_dir) if a.log_dir else None, w or None))
                    print("RESULT " + json.dumps(results[-1]), flush=True)
    if not a.no_write:
        write_section(results, a.chunk_size)


if __name__ == "__main__":
    main()
