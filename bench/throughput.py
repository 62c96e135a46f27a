"""Dataset throughput with images in flight: the same manifest at several `orchestration.max_in_flight`.

    python bench/throughput.py                                  # tiny profile, CPU, 32 CIEBench images, 1 vs 8
    python bench/throughput.py --images 8 --in-flight 1 2 8 --no-write
    python bench/throughput.py [dataset] --config /tmp/fullsize/config.yaml --device cuda --in-flight 1 8
    python bench/throughput.py llm ...                          # the LLM figures: bench/throughput_llm.py

Each window runs in a fresh subprocess (its own models, ephemeral Prefect API, store and peak RSS):
one warm-up image first (loads every model, on a store of its own), then the measured run of
``--images`` CIEBench photos through ``edit_dataset`` on a fresh store. Figures per window:
images/s, wall seconds, peak RSS, the batch sizes each model's dynamic batcher saw
(cielr_core.batching; on CPU batching is off unless the config turns it on), the most LLM calls in
progress at once, row statuses, and a per-stage profile (seconds summed over the images, from
results.parquet's t_* columns: where the time goes; with images in flight the stages overlap, so the
sum exceeds the wall time). On CUDA also peak GPU memory. Printed as JSON; appended to
docs/benchmarks.md under "Throughput: images in flight" unless --no-write.

``--config FILE`` is a YAML settings file as for ``cielr run -c`` (e.g. full-size random-weight
models on a GPU); ``--device`` sets the perception / LLM / editing / eval devices.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CIEBENCH = REPO.parent / "shared" / "datasets" / "ciebench"


def _config(args: argparse.Namespace, window: int, models_dir: str | None) -> dict:
    cfg: dict = {}
    if args.config:
        import yaml

        cfg = yaml.safe_load(Path(args.config).read_text()) or {}
    if models_dir and "models_dir" not in cfg:
        cfg["models_dir"] = models_dir
    orch = cfg.setdefault("orchestration", {})
    orch["max_in_flight"] = window
    orch.setdefault("chunk_size", max(args.images, 1))
    if args.device:
        for section in ("perception", "llm", "editing", "eval"):
            cfg.setdefault(section, {})["device"] = args.device
    if args.batching:
        cfg.setdefault("perception", {})["batching"] = args.batching
    return cfg


class _CountingLLM:
    """The run's LLM with a count of calls in progress (the most at once is the observed concurrency)."""

    lock = threading.Lock()
    now = 0
    most = 0
    calls = 0

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def complete(self, *a, **kw):
        cls = type(self)
        with cls.lock:
            cls.now += 1
            cls.calls += 1
            cls.most = max(cls.most, cls.now)
        try:
            return self._inner.complete(*a, **kw)
        finally:
            with cls.lock:
                cls.now -= 1


def child(args: argparse.Namespace) -> None:
    """One window in this process: warm-up image, then the measured run; prints one JSON line."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    import pyarrow.parquet as pq

    from cielr_core import batching
    from cielr_core.manifest import write_manifest
    from cli.commands.demo import write_demo_inputs
    from flows.edit_dataset import edit_dataset, results_uri
    from tasks import runtime

    real_llm = runtime.llm
    runtime.llm = lambda s: _CountingLLM(real_llm(s))
    work = Path(args.work)
    cfg = json.loads(args.child_config)
    _, rows = write_demo_inputs(work / "inputs", str(CIEBENCH), args.images)
    warm = write_manifest(rows[:1], str(work / "warm.parquet"))
    manifest = write_manifest(rows, str(work / "manifest.parquet"))
    profile = args.profile
    t0 = time.perf_counter()
    results_uri(edit_dataset(manifest_uri=warm, store=str(work / "store-warm"), profile=profile, config=cfg,
                             return_state=True))  # a run with failed rows ends Failed, results written all the same
    warm_s = time.perf_counter() - t0
    batching.clear()
    _CountingLLM.most = _CountingLLM.calls = 0
    try:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # noqa: BLE001
        cuda = False
    t0 = time.perf_counter()
    uri = results_uri(edit_dataset(manifest_uri=manifest, store=str(work / "store"), profile=profile, config=cfg,
                                   return_state=True))
    wall = time.perf_counter() - t0
    table = pq.read_table(uri).to_pylist()
    statuses: dict[str, int] = {}
    stages: dict[str, float] = {}
    for r in table:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        for k, v in r.items():
            if k.startswith("t_") and v:
                stages[k[2:]] = round(stages.get(k[2:], 0.0) + float(v), 2)
    out = {
        "max_in_flight": cfg["orchestration"]["max_in_flight"],
        "images": len(table),
        "wall_s": round(wall, 2),
        "images_per_s": round(len(table) / wall, 4),
        "warmup_s": round(warm_s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "batch_sizes": batching.stats(),
        "llm_calls": _CountingLLM.calls,
        "llm_max_concurrent": _CountingLLM.most,
        "statuses": statuses,
        "stage_seconds_summed": dict(sorted(stages.items(), key=lambda kv: -kv[1])),
        "errors": sorted({str(r["error"])[:300] for r in table if r["status"] == "failed"})[:3],
    }
    if cuda:
        import torch

        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print("RESULT " + json.dumps(out), flush=True)


def machine() -> str:
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    except OSError:
        cpu = platform.processor() or "?"
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001
        pass
    return f"{platform.node()}: {os.cpu_count()} CPU cores ({cpu}){gpu}, Python {platform.python_version()}"


def write_docs(args: argparse.Namespace, results: list[dict]) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cfg = args.config or f"profile {args.profile}"
    lines = [
        "", f"### Throughput: images in flight ({when})", "",
        f"Machine: {machine()}; load average when written {os.getloadavg()[0]:.1f}. Config: {cfg}; "
        f"device {args.device or 'auto'}; perception.batching {args.batching or 'from config (auto)'}; "
        f"{args.images} CIEBench images, one chunk; ephemeral Prefect API; one warm-up image per window first. "
        "Command: `python bench/throughput.py " + " ".join(sys.argv[1:]) + "`.", "",
        "| max_in_flight | images/s | wall s | peak RSS MiB | batch sizes seen (size: calls) | LLM calls | "
        "most LLM calls at once | statuses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['max_in_flight']} | failed: {r['error'][:200]} | | | | | | |")
            continue
        lines.append(
            f"| {r['max_in_flight']} | {r['images_per_s']:.3f} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{json.dumps(r['batch_sizes']) if r['batch_sizes'] else 'none (batching off)'} | {r['llm_calls']} | "
            f"{r['llm_max_concurrent']} | {json.dumps(r['statuses'])} |")
    ok = [r for r in results if "error" not in r]
    if ok:
        lines += ["", "Per-stage seconds, summed over the images (where the time goes):", "",
                  "| max_in_flight | " + " | ".join(ok[0]["stage_seconds_summed"]) + " |",
                  "|---" * (len(ok[0]["stage_seconds_summed"]) + 1) + "|"]
        for r in ok:
            lines.append(f"| {r['max_in_flight']} | "
                         + " | ".join(str(r["stage_seconds_summed"].get(k, "")) for k in ok[0]["stage_seconds_summed"])
                         + " |")
        if len(ok) > 1:
            base = ok[0]["images_per_s"]
            lines += ["", "Speed-up over max_in_flight " + str(ok[0]["max_in_flight"]) + ": "
                      + ", ".join(f"{r['max_in_flight']}: {r['images_per_s'] / base:.2f}x" for r in ok[1:]) + "."]
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    head = "## Throughput: images in flight (bench/throughput.py)"
    if head not in text:
        text = text.rstrip("\n") + "\n\n" + head + "\n"
        text += ("\nOn CPU the model batchers are off by default (perception.batching auto = CUDA only), so a CPU "
                 "run's speed-up comes from overlapping the images' stages on the cores, not from batching.\n"
                 "\nOn a GPU with full-size random weights (SAM2.1-L, OWLv2-L, Depth-Anything-V2-L, SD 1.5 inpaint, "
                 "a Qwen2.5-7B-size LM): not yet measured unless a section below names a GPU. The command: "
                 "`python bench/gpu_fullsize.py make --out /tmp/fullsize && python bench/throughput.py --config "
                 "/tmp/fullsize/config.yaml --device cuda --images 32 --in-flight 1 8`.\n")
    i = text.index(head) + len(head)
    nxt = text.find("\n## ", i)
    block = "\n".join(lines) + "\n"
    text = text[:nxt] + "\n" + block + text[nxt:] if nxt != -1 else text.rstrip("\n") + "\n" + block
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dataset"]:  # the default benchmark, also by name
        argv = argv[1:]
    if argv[:1] == ["llm"]:
        llm = REPO / "bench" / "throughput_llm.py"
        if not llm.exists():
            print("bench/throughput_llm.py is not there (the LLM figures)", file=sys.stderr)
            return 2
        return subprocess.call([sys.executable, str(llm), *argv[1:]])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--config", help="YAML settings file (as `cielr run -c`)")
    ap.add_argument("--profile", default=None, help="settings profile (default: tiny without --config)")
    ap.add_argument("--device", help="cpu / cuda / cuda:N for every model")
    ap.add_argument("--batching", choices=["auto", "on", "off"], help="perception.batching (default: the config's)")
    ap.add_argument("--models-dir", help="tiny models folder (default: made once under ~/.cache/cielr-bench)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per window")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.profile is None and not args.config and not args.child:  # the child gets its config as JSON
        args.profile = "tiny"
    if args.child:
        child(args)
        return 0
    models_dir = args.models_dir
    if args.profile == "tiny":
        from cielr_core.tiny import make_all

        models_dir = models_dir or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                       / "cielr-bench" / "models")
        make_all(models_dir)  # written once; kept when complete
    results = []
    for n in args.in_flight:
        with tempfile.TemporaryDirectory(prefix=f"cielr-throughput-{n}-") as work:
            env = dict(os.environ, PREFECT_HOME=str(Path(work) / "prefect-home"),
                       PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                       PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="600")
            cmd = [sys.executable, __file__, "--child", "--work", work, "--images", str(args.images),
                   "--child-config", json.dumps(_config(args, n, models_dir))]
            if args.profile:
                cmd += ["--profile", args.profile]
            t0 = time.perf_counter()
            try:
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
                line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise RuntimeError(f"exit {p.returncode}: {(p.stderr or p.stdout)[-1500:]}")
                r = json.loads(line[len("RESULT "):])
            except Exception as e:  # noqa: BLE001 - report the window that failed, go on
                r = {"max_in_flight": n, "error": f"{type(e).__name__}: {e}"}
            r["process_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(r), flush=True)
            results.append(r)
    ok = [r for r in results if "error" not in r]
    summary = {"machine": machine(), "config": args.config or f"profile {args.profile}", "device": args.device,
               "images": args.images, "results": results}
    if len(ok) > 1:
        summary["speedup"] = {str(r["max_in_flight"]): round(r["images_per_s"] / ok[0]["images_per_s"], 3)
                              for r in ok}
    print(json.dumps(summary, indent=1))
    if not args.no_write:
        write_docs(args, results)
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
