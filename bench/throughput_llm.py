"""The LLM batched (issue 15): what concurrent LLM calls buy.

    python bench/throughput_llm.py inprocess [--calls 32] [--concurrency 8]
    python bench/throughput_llm.py endpoint  [--images 8] [--windows 1 8] [--latency 0.5]
    python bench/throughput_llm.py all       # both; figures appended to docs/benchmarks.md unless --no-write

* ``inprocess``: the tiny random-weight Qwen2 in this process, grammar-constrained calls (three
  schemas, prompts of different lengths). Calls/s with one caller at ``llm.max_batch_size`` 1
  against ``--concurrency`` callers at ``llm.max_batch_size`` = concurrency (their calls decoded
  as one batch), whether every answer equals the lone call's, the batch sizes the batcher saw, and
  how far left padding moves the logits (prefill of each prompt alone vs in the padded batch).
* ``endpoint``: bench/llm_endpoint.py serves the same tiny model in its own process as an
  OpenAI-compatible endpoint with a fixed added service latency and no capacity limit (the shape
  of a continuously batching vLLM/SGLang server); a tiny-profile dataset run of ``--images``
  CIEBench photos with ``llm.backend openai`` at ``orchestration.max_in_flight`` 1 and 8 (fresh
  store each): images/s, the most requests the endpoint had in flight, and each stage's seconds.
  ``--perception-cached``: the images' perception (segment, detect, depth, SSR merge of the input
  image) is computed once beforehand with the in-process tiny LLM, and each window starts from a
  copy of that store, so the windows time what the LLM's concurrency acts on (the reasoning loop
  and the orchestration around it; stages whose inputs equal the pre-pass's come from the cache)
  rather than tiny SAM2's automatic masks on the CPU, which no number of LLM requests in flight can
  shorten.

Torch runs on one intra-op thread (the stage tasks' own setting, orchestration.torch_threads).
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
import threading
import time
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WAIT_MS = float(os.environ.get("BENCH_WAIT_MS", "5"))
HEADING = "## The LLM batched (issue 15)"


def _machine() -> str:
    return f"{platform.node()} / {platform.processor() or platform.machine()} / {os.cpu_count()} CPU cores"


def _models_dir(arg: str | None) -> str:
    from cielr_core.tiny import make_all

    d = arg or str(Path(tempfile.gettempdir()) / "cielr-bench-models")
    make_all(d)
    return d


# ------------------------------------------------------------------------------------------------
def bench_inprocess(models_dir: str, calls: int, concurrency: int) -> dict:
    import torch
    from pydantic import BaseModel, Field

    from cielr_core.config import load_settings
    from cielr_core.models import pin_intra_op_threads
    from cielr_core.reasoning import AnswerParseError, make_llm
    from cielr_core.reasoning.transformers_backend import observed_batch_sizes

    pin_intra_op_threads(1)

    class Pick(BaseModel):
        status: str = Field(pattern="^(ok|no_target)$")
        ids: list[int] = Field(max_length=3)
        word: str = Field(max_length=12)
        n: int = Field(ge=0, le=99)

    class Small(BaseModel):
        label: str = Field(max_length=20)
        n: int = Field(ge=0, le=9)

    class Op(BaseModel):
        op: Literal["remove", "replace", "recolor"]
        target: int = Field(ge=0, le=5)
        prompt: str = Field(max_length=30)

    schemas = (Pick, Small, Op)
    work = [([{"role": "system", "content": "Answer in JSON."},
              {"role": "user", "content": f"call {i}: " + "the apple near the cup " * (i % 7)}], schemas[i % 3])
            for i in range(calls)]

    def mk(bs: int):
        s = load_settings(profile="tiny", overrides={"models_dir": models_dir, "llm": {
            "max_new_tokens": 256, "max_batch_size": bs, "batch_wait_ms": WAIT_MS}})
        return make_llm(s.llm, s)

    def one(llm, i):
        m, sc = work[i]
        try:
            return llm.complete(m, sc).raw
        except AnswerParseError as e:
            return "cut off: " + e.raw

    alone, together = mk(1), mk(concurrency)
    for sc in schemas:  # load + compile the grammars outside the timings
        one(alone, schemas.index(sc))
    t0 = time.perf_counter()
    seq = [one(alone, i) for i in range(calls)]
    t_seq = time.perf_counter() - t0

    before = observed_batch_sizes()
    got: list = [None] * calls
    nxt = iter(range(calls))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            got[i] = one(together, i)

    t0 = time.perf_counter()
    th = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    t_con = time.perf_counter() - t0
    after = observed_batch_sizes()
    sizes = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}

    # how far left padding moves the logits: each prompt's prefill alone vs in one padded batch
    lm = together._load()
    prompts = [lm.tokenizer(together.render(m), add_special_tokens=False)["input_ids"] for m, _ in work[:concurrency]]
    width = max(map(len, prompts))
    x = torch.full((len(prompts), width), lm.pad_id)
    a = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        x[i, width - len(p):] = torch.tensor(p)
        a[i, width - len(p):] = 1
    diffs, equal = [], 0
    with torch.inference_mode():
        b = lm.model(input_ids=x, attention_mask=a, position_ids=(a.cumsum(-1) - 1).clamp(min=0),
                     logits_to_keep=1).logits[:, -1]
        margins = []
        for i, p in enumerate(prompts):
            o = lm.model(input_ids=torch.tensor([p]), logits_to_keep=1).logits[0, -1]
            diffs.append(float((b[i] - o).abs().max()))
            equal += int(torch.equal(b[i], o))
            top = o.topk(2).values
            margins.append(float(top[0] - top[1]))
    return {
        "calls": calls, "concurrency": concurrency,
        "calls_per_s_1": calls / t_seq, "calls_per_s_n": calls / t_con, "speedup": t_seq / t_con,
        "answers_equal": sum(a == b for a, b in zip(seq, got)), "batch_sizes": sizes,
        "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
        "max_abs_logit_diff": max(diffs), "bit_equal_rows": equal, "rows": len(prompts),
        "min_top2_margin": min(margins),
    }


# ------------------------------------------------------------------------------------------------
def _prefill_perception(models_dir: str, manifest: str, store: Path, work: Path) -> float:
    """Run the dataset once with the in-process tiny LLM into ``store``: perception's cache keys do not
    depend on the LLM, so a window that starts from a copy finds every input image's SSR cached,
    while its reasoning (keyed on the LLM settings: backend, endpoint model) is computed afresh."""
    code = ("import json,sys,time; sys.path.insert(0, %r)\n"
            "from flows.edit_dataset import edit_dataset\n"
            "t=time.perf_counter(); edit_dataset(manifest_uri=%r, store=%r, profile='tiny', config=json.loads(%r))\n"
            "print(time.perf_counter()-t)") % (str(REPO), manifest, str(store), json.dumps({"models_dir": models_dir}))
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-prefill"), "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"perception pre-pass failed:\n{r.stderr[-3000:]}")
    return float(r.stdout.strip().splitlines()[-1])


def bench_endpoint(models_dir: str, images: int, windows: list[int], latency: float, ciebench: str,
                   perception_cached: bool = False) -> dict:
    import shutil

    import pyarrow.parquet as pq

    from cli.commands.demo import write_demo_inputs

    work = Path(tempfile.mkdtemp(prefix="cielr-llm-bench-"))
    _, rows = write_demo_inputs(work / "in", ciebench, images)
    from cielr_core.manifest import write_manifest

    manifest = write_manifest(rows, str(work / "manifest.parquet"))
    _, warm_rows = write_demo_inputs(work / "warm", ciebench, images + 1)
    warm = write_manifest(warm_rows[-1:], str(work / "warm.parquet"))  # an image the timed run does not have
    out: dict = {"images": images, "latency_s": latency, "runs": {}, "perception_cached": perception_cached}
    prefilled = work / "store-prefilled"
    if perception_cached:
        out["prefill_s"] = _prefill_perception(models_dir, manifest, prefilled, work)
    for w in windows:
        stats = work / f"endpoint-{w}.json"
        ep = subprocess.Popen([sys.executable, str(REPO / "bench" / "llm_endpoint.py"), "--models-dir", models_dir,
                               "--latency", str(latency), "--max-new-tokens", "256", "--stats", str(stats)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            url = ep.stdout.readline().strip()
            assert url.startswith("http://"), f"endpoint did not start: {url!r}"
            cfg = {"models_dir": models_dir,
                   "orchestration": {"max_in_flight": w, "retry_delay_s": 0.0, "retry_jitter_factor": 0.0},
                   "llm": {"backend": "openai", "base_url": url, "model": {"id": "tiny/qwen2"},
                           "max_concurrency": max(w, 1), "max_retries": 1}}
            store = work / f"store-{w}"
            if perception_cached:
                shutil.copytree(prefilled, store)
                shutil.rmtree(store / "runs", ignore_errors=True)  # the pre-pass's own results
            # one warm-up image first (loads every model, on a store of its own), then the timed run
            code = ("import json,sys,time; sys.path.insert(0, %r)\n"
                    "from flows.edit_dataset import edit_dataset\n"
                    "cfg=json.loads(%r)\n"
                    "edit_dataset(manifest_uri=%r, store=%r, profile='tiny', config=cfg)\n"
                    "t=time.perf_counter(); uri=edit_dataset(manifest_uri=%r, store=%r, profile='tiny', config=cfg)\n"
                    "print(json.dumps({'uri': uri, 'seconds': time.perf_counter()-t}))") % (
                        str(REPO), json.dumps(cfg), warm, str(work / f"warm-{w}"), manifest, str(store))
            env = {**os.environ, "PREFECT_HOME": str(work / f"prefect-{w}"), "PREFECT_LOGGING_LEVEL": "WARNING",
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600"}
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"dataset run at max_in_flight {w} failed:\n{r.stderr[-3000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
        finally:
            ep.stdin.close()
            ep.wait(60)
        st = json.loads(stats.read_text())
        table = pq.read_table(res["uri"]).to_pylist()
        stage_s: dict[str, float] = {}
        for row in table:
            for k, v in row.items():
                if k.startswith("t_") and isinstance(v, (int, float)):
                    stage_s[k[2:]] = stage_s.get(k[2:], 0.0) + float(v)
        out["runs"][w] = {"seconds": res["seconds"], "images_per_s": images / res["seconds"],
                          "statuses": sorted({r_["status"] for r_ in table}),
                          "endpoint_requests": st["requests"], "endpoint_max_in_flight": st["max_in_flight"],
                          "endpoint_errors": st["errors"], "stage_seconds_total": stage_s}
    if len(windows) >= 2:
        a, b = out["runs"][windows[0]], out["runs"][windows[-1]]
        out["speedup"] = b["images_per_s"] / a["images_per_s"]
    return out


# ------------------------------------------------------------------------------------------------
def write(results: dict, args) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n### bench/throughput_llm.py, {date}\n", f"Machine: {_machine()}; torch on 1 intra-op thread; "
             "tiny profile (random-weight Qwen2, 2 layers, hidden 32). 1-minute load average at the start / end of "
             + "; ".join(f"{k}: {v[0]:.1f} / {v[1]:.1f}" for k, v in results.get("load", {}).items()) + ".\n"]
    if "inprocess" in results:
        r = results["inprocess"]
        lines += [
            f"\nIn-process LLM, {r['calls']} grammar-constrained calls (3 schemas, prompts of "
            f"{r['prompt_tokens'][0]}-{r['prompt_tokens'][1]} tokens, max_new_tokens 256, batch_wait_ms 5):\n",
            "\n| callers | llm.max_batch_size | calls/s |\n|---|---|---|\n",
            f"| 1 | 1 | {r['calls_per_s_1']:.2f} |\n",
            f"| {r['concurrency']} | {r['concurrency']} | {r['calls_per_s_n']:.2f} |\n",
            f"\nSpeed-up {r['speedup']:.1f}x (target >= 3x). Answers equal to the lone calls': "
            f"{r['answers_equal']}/{r['calls']}. Decode steps by the rows they carried: {r['batch_sizes']}.\n",
            f"Left padding and the attention mask move the prefill logits by at most {r['max_abs_logit_diff']:.2e} "
            f"(|logit| ~0.6; {r['bit_equal_rows']}/{r['rows']} rows bit-equal; the smallest top-1/top-2 "
            f"margin seen was {r['min_top2_margin']:.3f}), so a greedy pick changes only at a near-tie.\n",
        ]
    if "endpoint" in results:
        r = results["endpoint"]
        cached = (f" Perception of the input images cached beforehand (--perception-cached: a pre-pass with the "
                  f"in-process LLM, {r['prefill_s']:.0f} s; each window starts from a copy of that store: the stages whose "
                  f"inputs equal the pre-pass's come from the cache, the input image's perception always, and here "
                  f"inpainting too, since the endpoint serves the same tiny model and its answers equal the pre-pass's; "
                  f"so the windows time the LLM calls and the orchestration around them)."
                  if r.get("perception_cached") else "")
        lines += [f"\nOpenAI-compatible endpoint (bench/llm_endpoint.py in its own process: the tiny model behind "
                  f"a fixed {r['latency_s']} s service latency, no capacity limit), tiny-profile dataset run of "
                  f"{r['images']} CIEBench images after one warm-up image, llm.max_concurrency = max_in_flight.{cached}\n",
                  "\n| max_in_flight | seconds | images/s | LLM requests (with the warm-up image's) | most in flight at the endpoint | row statuses |\n"
                  "|---|---|---|---|---|---|\n"]
        for w, x in r["runs"].items():
            lines.append(f"| {w} | {x['seconds']:.1f} | {x['images_per_s']:.3f} | {x['endpoint_requests']} | "
                         f"{x['endpoint_max_in_flight']} | {', '.join(x['statuses'])} |\n")
        if "speedup" in r:
            lines.append(f"\nSpeed-up {r['speedup']:.1f}x (target >= 5x).\n")
        lines.append("\nStage seconds summed over the images (results.parquet t_ columns):\n\n")
        for w, x in r["runs"].items():
            lines.append(f"- max_in_flight {w}: " + ", ".join(f"{k} {v:.1f}" for k, v in x["stage_seconds_total"].items())
                         + "\n")
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if HEADING not in text:
        text = text.rstrip("\n") + "\n\n" + HEADING + "\n"
    # insert this run's block at the end of our own section (before the next '## ' heading)
    start = text.index(HEADING) + len(HEADING)
    nxt = text.find("\n## ", start)
    block = "".join(lines)
    text = text[:nxt] + "\n" + block + text[nxt:] if nxt != -1 else text.rstrip("\n") + "\n" + block
    doc.write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["inprocess", "endpoint", "all"], nargs="?", default="all")
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--calls", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--windows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--ciebench", default=str(REPO.parent / "shared" / "datasets" / "ciebench"))
    ap.add_argument("--perception-cached", action="store_true",
                    help="endpoint: perceive the images once beforehand; the windows start from that store")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    md = _models_dir(args.models_dir)
    results: dict = {}
    if args.what in ("inprocess", "all"):
        load0 = os.getloadavg()[0]
        results["inprocess"] = bench_inprocess(md, args.calls, args.concurrency)
        results.setdefault("load", {})["in-process"] = (load0, os.getloadavg()[0])
        print(json.dumps(results["inprocess"], indent=1), flush=True)
    if args.what in ("endpoint", "all"):
        load0 = os.getloadavg()[0]
        results["endpoint"] = bench_endpoint(md, args.images, args.windows, args.latency, args.ciebench,
                                             args.perception_cached)
        results.setdefault("load", {})["endpoint"] = (load0, os.getloadavg()[0])
        print(json.dumps(results["endpoint"], indent=1), flush=True)
    if not args.no_write:
        write(results, args)


if __name__ == "__main__":
    main()
