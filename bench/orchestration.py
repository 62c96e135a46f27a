"""Prefect overhead of the whole per-image DAG, with near-zero-cost stages.

Every stage task of ``tasks.stages.Stages`` is replaced by a task that does (almost) nothing but
returns a reference of the right shape, bound with the SAME run options as the real stages (cache
key function, result storage on the artifact store, retries, timeout, GPU tag). So the figures are
what Prefect and our orchestration cost per image: task-run bookkeeping against the API, cache-key
computation, result persistence, chunk subflows, artifacts and results.parquet.

    python bench/orchestration.py --sizes 100 1000          # cold run, then a fully cached re-run
    python bench/orchestration.py --sizes 100 --no-write    # just print

Each size runs in its own subprocess (fresh ephemeral Prefect API, fresh store), so peak RSS is per
size. Results are appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
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
    def inpaint(image: ImageRef, step: StepRef, settings, seed: int) -> EditRef:
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


def child(n: int, workdir: Path, chunk_size: int, phase: str) -> dict:
    """Runs in a fresh process: the cold run over n rows, or (phase "cached") the re-run of the same
    manifest on the same store and Prefect database, as a later nightly run would."""
    import resource
    import threading

    import psutil

    os.environ["PREFECT_HOME"] = str(workdir / "prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    from cielr_core.manifest import write_manifest
    from flows.edit_dataset import edit_dataset
    from tasks import stages

    stages.Stages.for_settings = classmethod(lambda cls, s, ref=None: _noop_stages(s, ref))
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

    def sample():
        while not stop.is_set():
            samples.append(proc.memory_info().rss)
            stop.wait(0.25)

    # warm the ephemeral API first so its start-up is not billed to the first run
    from prefect import flow

    flow(lambda: None, name="warm-up")()
    rss_start = proc.memory_info().rss
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    uri = edit_dataset(manifest_uri=manifest, store=store, chunk_size=chunk_size)
    wall = time.perf_counter() - t0
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
        f"Machine: {machine()}. Python {platform.python_version()}, Prefect {prefect.__version__}, ephemeral API "
        f"(SQLite), local store, chunk size {chunk_size}. All nine stage tasks per image are no-ops bound with the "
        "real run options (content cache key, results persisted to the store, retries, timeout, GPU tag), so "
        "this is the orchestration cost alone; real stage compute comes on top.",
        "",
        "The cached re-run is a new process on the same store and Prefect database (as a later nightly run); "
        "its wall time excludes the ephemeral API's start-up.",
        "",
        "| images | rows ok | cold run s | cold s/image | cached re-run s | cached s/image | cached / cold | cache hits | RSS start MB | RSS after cold MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['n']} | {r['ok']} | {r['cold_s']} | {r['cold_per_image_s']} | {r['cached_s']} | "
                     f"{r['cached_per_image_s']} | {r['cached_fraction']} | {r['cached_hits']} | {r['rss_start_mb']} | "
                     f"{r['rss_after_cold_mb']} | {r['rss_peak_mb']} |")
    path = REPO / "docs" / "benchmarks.md"
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--chunk-size", type=int, default=50)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--phase", default="cold", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, Path(a.workdir), a.chunk_size, a.phase)))
        return
    results = []
    for n in a.sizes:
        with tempfile.TemporaryDirectory(prefix="cielr-bench-orch-") as d:
            phases = {}
            for phase in ("cold", "cached"):
                out = subprocess.run([sys.executable, __file__, "--child", str(n), "--workdir", d, "--phase", phase,
                                      "--chunk-size", str(a.chunk_size)], capture_output=True, text=True, cwd=REPO)
                if out.returncode != 0:
                    sys.exit(f"size {n} ({phase}) failed:\n{out.stderr[-4000:]}")
                phases[phase] = json.loads(out.stdout.strip().splitlines()[-1])
                print(json.dumps(phases[phase]), flush=True)
            c, w = phases["cold"], phases["cached"]
            results.append({
                "n": n, "cold_s": c["wall_s"], "cold_per_image_s": c["per_image_s"], "cached_s": w["wall_s"],
                "cached_per_image_s": w["per_image_s"], "cached_fraction": round(w["wall_s"] / c["wall_s"], 3),
                "cached_hits": f"{w['cache_hits']}/{w['task_runs']}", "ok": f"{c['ok_rows']}/{n}",
                "rss_start_mb": c["rss_start_mb"], "rss_after_cold_mb": c["rss_end_mb"], "rss_peak_mb": c["rss_peak_mb"],
            })
    if not a.no_write:
        write_section(results, a.chunk_size)


if __name__ == "__main__":
    main()
