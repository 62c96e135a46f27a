"""Are two runs' outputs byte-identical? Compares two local stores written by the same manifest
(e.g. `cielr demo -n 3` from two checkouts, same seeds, fresh store each).

Every artifact key under the content-addressed prefixes (images, seg, det, depth, ssr, reason,
edit, out, plan) must exist in both stores with the same bytes; traces are compared without their
timings (latencies and timestamps differ from run to run). Prefect's own records (prefect/) and
run folders (runs/) hold run ids and are left out; results.parquet rows are compared on every
column except timings.

    python bench/byte_identical.py STORE_A STORE_B      # exit 0 when identical, 1 otherwise
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

SKIP_TOP = {"prefect", "runs"}
TIMING_KEYS = {"t", "latency_s", "wall_s", "seconds"}


def artifact_files(root: Path) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if rel.split("/", 1)[0] in SKIP_TOP or any(seg.startswith(".tmp-") for seg in rel.split("/")):
            continue
        out[rel] = p
    return out


def _strip_timings(value):
    if isinstance(value, dict):
        return {k: _strip_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_strip_timings(v) for v in value]
    return value


def same_bytes(rel: str, a: Path, b: Path) -> bool:
    da, db = a.read_bytes(), b.read_bytes()
    if da == db:
        return True
    if rel.endswith("trace.json"):  # trace.json, decompose-trace.json: equal but for timings
        return _strip_timings(json.loads(da)) == _strip_timings(json.loads(db))
    return False


def results_rows(root: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    runs = sorted((root / "runs").glob("*/results.parquet"), key=os.path.getmtime)
    if not runs:
        return {}
    rows = pq.read_table(io.BytesIO(runs[-1].read_bytes())).to_pylist()
    out = {}
    for r in rows:
        keep = {k: v for k, v in r.items() if not k.startswith("t_") and k not in ("seconds", "image_uri")}
        for k, v in list(keep.items()):  # URIs name the store: compare the key inside it
            if isinstance(v, str) and v.startswith(str(root)):
                keep[k] = v[len(str(root)):]
        if isinstance(keep.get("cached_stages"), str):  # before: "stage:hits/calls,..."
            keep["cached_stages"] = {p.split(":")[0]: p.split(":")[1] for p in keep["cached_stages"].split(",") if p}
        elif isinstance(keep.get("cached_stages"), list):  # after: map column as (stage, {hits, calls}) pairs
            keep["cached_stages"] = {k: f"{v['hits']}/{v['calls']}" for k, v in keep["cached_stages"]}
        out[r["image_id"]] = keep
    return out


def compare(a: Path, b: Path) -> list[str]:
    fa, fb = artifact_files(a), artifact_files(b)
    problems = [f"only in {a}: {k}" for k in sorted(set(fa) - set(fb))]
    problems += [f"only in {b}: {k}" for k in sorted(set(fb) - set(fa))]
    problems += [f"differs: {k}" for k in sorted(set(fa) & set(fb)) if not same_bytes(k, fa[k], fb[k])]
    ra, rb = results_rows(a), results_rows(b)
    for image_id in sorted(set(ra) | set(rb)):
        if ra.get(image_id) != rb.get(image_id):
            problems.append(f"results row {image_id}: {ra.get(image_id)} != {rb.get(image_id)}")
    n_out = sum(1 for k in fa if k.startswith("out/"))
    print(f"{len(fa)} artifacts in {a} ({n_out} under out/), {len(fb)} in {b}; {len(ra)} result rows")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    problems = compare(Path(argv[0]).resolve(), Path(argv[1]).resolve())
    for p in problems:
        print(p)
    print("identical" if not problems else f"{len(problems)} difference(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
