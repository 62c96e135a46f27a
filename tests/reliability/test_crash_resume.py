"""Crash-resume: `cielr run` over three tiny-model images, SIGKILLed at random points (fixed seed)
at least twenty times and re-run after each kill. At the end every row has completed exactly once
in the final results.parquet, every stored JSON, PNG, Parquet and Prefect record parses (a
temporary file that a kill left behind is never listed by the store), and the outputs are
byte-identical to an uninterrupted run's (traces compared without their latencies)."""

from __future__ import annotations

import importlib.util
import io
import random
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reliability.harness import leftover_temp_files, unreadable_objects
from storage import ArtifactStore

pytestmark = pytest.mark.slow

# bench/byte_identical.py's comparison rules (bench/ is a folder of scripts, not a package)
_spec = importlib.util.spec_from_file_location(
    "byte_identical", Path(__file__).resolve().parents[2] / "bench" / "byte_identical.py")
_byte_identical = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_byte_identical)
artifact_files, same_bytes = _byte_identical.artifact_files, _byte_identical.same_bytes

KILLS = 20
SEED = 16
ROW_COLUMNS = ("image_id", "status", "error", "failed_stage", "edited_uri", "mask_uri", "trace_uri")


def _final_rows(store: Path) -> list[dict]:
    runs = sorted(store.glob("runs/*/results.parquet"), key=lambda p: p.stat().st_mtime)
    assert runs, f"no results.parquet in {store}"
    return pq.read_table(io.BytesIO(runs[-1].read_bytes())).to_pylist()


def _comparable(rows: list[dict], store: Path) -> dict[str, dict]:
    out = {}
    for r in rows:
        keep = {k: r.get(k) for k in ROW_COLUMNS}
        for k, v in keep.items():
            if isinstance(v, str) and v.startswith(str(store)):
                keep[k] = v[len(str(store)):]
        out[r["image_id"]] = keep
    return out


def test_sigkill_at_random_points_loses_nothing(forked_cli, photos3, tmp_path):
    manifest, inputs = photos3
    rng = random.Random(SEED)

    def run(store: Path, name: str):
        return forked_cli.start(["run", str(manifest), "--store", str(store), "--profile", "tiny"],
                                tmp_path / f"{name}.log")

    # the uninterrupted reference run, which also measures how long a run takes
    ref = tmp_path / "reference"
    t0 = time.monotonic()
    p = run(ref, "reference")
    p.join(300)
    length = time.monotonic() - t0
    assert p.exitcode == 0, (tmp_path / "reference.log").read_text()[-3000:]

    store = tmp_path / "crashed"
    kills, completed, attempt = [], 0, 0
    while len(kills) < KILLS:
        attempt += 1
        delay = rng.uniform(0.05, length)
        t0 = time.monotonic()
        p = run(store, f"attempt-{attempt}")
        p.join(delay)
        if p.is_alive():
            forked_cli.kill(p)
            kills.append(round(delay, 2))
        else:  # finished before its kill: the next kills are drawn within this (shorter) run's length
            assert p.exitcode == 0, (tmp_path / f"attempt-{attempt}.log").read_text()[-3000:]
            completed += 1
            length = time.monotonic() - t0
    p = run(store, "final")
    p.join(300)
    assert p.exitcode == 0, (tmp_path / "final.log").read_text()[-3000:]

    rows = _final_rows(store)
    ids = [r["image_id"] for r in rows]
    assert sorted(ids) == sorted(r["image_id"] for r in inputs), ids  # every row exactly once
    assert all(r["status"] in ("ok", "no_target") for r in rows), [(r["image_id"], r["error"]) for r in rows]
    assert unreadable_objects(store) == []
    # a write cut by a kill may leave its temporary file on disk; the store never shows or reads it
    temps = leftover_temp_files(store)
    visible = set(ArtifactStore(str(store)).list())
    assert [t for t in temps if t in visible] == []
    assert _comparable(rows, store) == _comparable(_final_rows(ref), ref)
    a, b = artifact_files(ref), artifact_files(store)
    assert sorted(a) == sorted(b)
    assert [k for k in a if not same_bytes(k, a[k], b[k])] == []
    print(f"crash-resume: {len(kills)} kills at {kills} s, {completed} runs finished before their kill, "
          f"{len(rows)} rows, 0 lost, {len(a)} artifacts identical; {len(temps)} temporary files left on disk")
