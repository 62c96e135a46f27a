"""ONE tiny-model edit_dataset run over a manifest that mixes every hostile row with two good ones, in
a subprocess under an address-space cap (so a regression that allocates gigabytes fails this test
instead of taking the machine down). Every row must end in results.parquet: the hostile ones
`failed` or `invalid` with a clear message (no traceback), the good ones done, nothing hangs."""

from __future__ import annotations

import io
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from reliability.hostile import scene, write_good_images, write_images

REPO = Path(__file__).resolve().parents[2]
MEMORY_CAP = 8 * 1024**3  # address space: the process reserves ~4.5 GiB beyond its ~1.6 GiB resident peak
DONE = ("ok", "no_target")

RUN = """
import json, sys
from flows.edit_dataset import edit_dataset
try:
    print("RESULT", edit_dataset(**json.loads(sys.argv[1])))
except BaseException as e:  # the run may end Failed because rows failed; results.parquet is what counts
    print("FLOW-ENDED", type(e).__name__, str(e)[:3000])
print("MEMORY", *[l.strip() for l in open("/proc/self/status") if l.startswith(("VmPeak", "VmHWM"))])
"""


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _hostile_manifest(folder: Path, outside: Path) -> tuple[Path, dict[str, tuple[str, str | None]]]:
    """The manifest and, per image_id, the status it must end with and a part of its message."""
    images = folder / "images"
    corpus = write_images(images)
    good = write_good_images(images)
    wide = images / "wide-2560x128.png"  # allowed (aspect 20:1) but above the working bound
    Image.fromarray(scene(2560, 128, seed=5)).save(wide)
    (images / "link-out.png").symlink_to(outside)
    (images / "link-zero.png").symlink_to("/dev/zero")
    rows: list[tuple[str | None, str, str | None, float]] = [
        ("good-0", str(good[0]), "remove the red box", math.nan),  # NaN seed as pandas writes a missing one
        ("good-1", str(good[1]), "remove the blue box", 3.0),  # a float seed that is a whole number
    ]
    expect: dict[str, tuple[str, str | None]] = {"good-0": ("done", None), "good-1": ("done", None)}
    for name, (path, outcome, message) in corpus.items():
        if outcome == "failed":
            iid = "img-" + name.replace(".", "-")
            rows.append((iid, str(path), "remove the cup", math.nan))
            expect[iid] = ("failed", message)
    rows.append(("img-wide-bounded", str(wide), "remove the cup", math.nan))
    expect["img-wide-bounded"] = ("done", None)
    for iid, uri, instruction, seed, message in [
        ("../escape", str(good[0]), "remove it", math.nan, "unsafe image_id"),
        ("dup", str(good[0]), "remove it", math.nan, None),
        ("dup", str(good[1]), "remove it", math.nan, "duplicate image_id 'dup'"),
        ("http", "http://127.0.0.1:9/a.png", "remove it", math.nan, "outside the allowed input roots"),
        ("passwd", "file:///etc/passwd", "remove it", math.nan, "outside the allowed input roots"),
        ("dotdot", "../outside.png", "remove it", math.nan, "outside the allowed input roots"),
        ("link-out", str(images / "link-out.png"), "remove it", math.nan, "outside the allowed input roots"),
        ("link-zero", str(images / "link-zero.png"), "remove it", math.nan, "outside the allowed input roots"),
        ("dev-zero", "/dev/zero", "remove it", math.nan, "outside the allowed input roots"),
        ("no-instruction", str(good[0]), None, math.nan, "missing instruction"),
        ("half-seed", str(good[0]), "remove it", 2.5, "seed must be a non-negative integer, got float 2.5"),
    ]:
        rows.append((iid, uri, instruction, seed))
        if message is not None:
            expect.setdefault(iid, ("invalid", message))
    expect["dup"] = ("done+invalid", "duplicate image_id 'dup'")
    manifest = folder / "hostile.parquet"
    pq.write_table(pa.table({
        "image_id": pa.array([r[0] for r in rows], pa.string()),
        "image_uri": pa.array([r[1] for r in rows], pa.string()),
        "instruction": pa.array([r[2] for r in rows], pa.string()),
        "seed": pa.array([r[3] for r in rows], pa.float64()),
    }), manifest)
    return manifest, expect


def test_one_run_over_every_hostile_row_under_a_memory_cap(prefect_harness, tiny_models_dir, tmp_path):
    from prefect.settings import PREFECT_API_URL

    folder = tmp_path / "data"
    folder.mkdir()
    outside = tmp_path / "outside.png"
    Image.fromarray(scene(64, 48)).save(outside)
    manifest, expect = _hostile_manifest(folder, outside)
    store = tmp_path / "store"
    args = {"manifest_uri": str(manifest), "store": str(store), "profile": "tiny",
            "config": {"models_dir": str(tiny_models_dir),
                       "orchestration": {"retry_delay_s": 0.0, "retry_jitter_factor": 0.0, "max_in_flight": 1},
                       # the wide image's working copy is 512x26: the bound at work, cheaply
                       "limits": {"max_working_side": 512}}}
    # glibc reserves a 64 MiB malloc arena per thread (address space, not memory): keep it from
    # counting against the cap as threads come and go
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, preexec_fn=_cap_memory, check=False)
    (tmp_path / "run.log").write_text(done.stdout + done.stderr)
    log = (done.stdout + done.stderr)[-4000:]
    rows_so_far = sorted(store.glob("runs/*/results.parquet"))
    if rows_so_far:
        for r in pq.read_table(rows_so_far[0]).to_pylist():
            print("ROW", r["image_id"], r["status"], r["failed_stage"], (r["error"] or "")[:300])
    found = sorted(store.glob("runs/*/results.parquet"))
    assert len(found) == 1, f"exit {done.returncode}, no results.parquet:\n{log}"
    rows = pq.read_table(io.BytesIO(found[0].read_bytes())).to_pylist()
    assert len(rows) == sum(2 if k == "dup" else 1 for k in expect), "every row ends in results.parquet"
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["image_id"], []).append(r)
    assert set(by_id) == set(expect)
    for iid, (status, message) in expect.items():
        got = by_id[iid]
        if status == "done+invalid":
            assert sorted(r["status"] in DONE for r in got) == [False, True], (iid, got)
            assert message in next(r for r in got if r["status"] not in DONE)["error"]
            continue
        r = got[0]
        if status == "done":
            assert r["status"] in DONE and not r["error"], (iid, r["status"], r["error"])
            assert r["edited_uri"]
            continue
        assert r["status"] == status, (iid, r["status"], r["error"])
        assert message.lower() in (r["error"] or "").lower(), (iid, r["error"])
        assert "Traceback" not in r["error"] and len(r["error"]) < 1000, (iid, r["error"])
        if status == "failed":
            assert r["failed_stage"] == "load", (iid, r["failed_stage"])
    # the seeds of the good rows: NaN read as missing (so the run's default seed is used), 3.0 as 3
    from cielr_core.config import load_settings

    assert by_id["good-0"][0]["seed"] == load_settings(profile="tiny").editing.seed
    assert by_id["good-1"][0]["seed"] == 3
    # the wide image's outputs are at its own size (perceived through the 512x26 working copy)
    wide = by_id["img-wide-bounded"][0]
    with Image.open(wide["edited_uri"]) as im:
        assert im.size == (2560, 128)
