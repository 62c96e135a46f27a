"""What a run's index.html and `cielr export` cost: a run built by hand in a local store (N rows,
each a WxH photo-like input, edited image, mask, overlay, plan, trace), then write_run_index and
export_run timed, and the page's size.

    .venv/bin/python bench/run_index.py --rows 200 --size 1024x768
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cielr_core.images import image_digest
from cielr_core.plan import EditPlan, EditStep
from storage import ArtifactStore
from tasks import keys
from tasks.refs import ResultRow, results_table
from tasks.run_outputs import export_run, write_run_index


def build(st: ArtifactStore, n: int, w: int, h: int) -> list[ResultRow]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    rows = []
    for i in range(n):
        img = np.stack([(xx * (i + 1)) % 256, (yy * 3 + i) % 256, (xx + yy) % 256], -1).astype(np.uint8)
        img = np.clip(img.astype(int) + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
        sha = image_digest(img)
        st.put_png(keys.image_key(sha), img)
        prefix = f"out/{sha}/i/cfg"
        mask = np.zeros((h, w), bool)
        mask[h // 4: h // 2, w // 4: w // 2] = True
        edited = img.copy()
        edited[mask] = 128
        st.put_png(keys.output_key(prefix, "edited"), edited)
        st.put_mask(keys.output_key(prefix, "mask"), mask)
        st.put_png(keys.output_key(prefix, "overlay"), 255 - img)
        st.put_json(keys.output_key(prefix, "ssr"), {"objects": {}})
        plan = EditPlan(instruction="remove it", steps=[EditStep(subtask="remove it", operation="remove",
                                                                 target_ids=[1], reason="the largest object")])
        st.put_bytes(keys.output_key(prefix, "plan"), plan.canonical_json())
        st.put_json(keys.output_key(prefix, "trace"), {"steps": []})
        rows.append(ResultRow(image_id=f"img-{i}", image_uri=f"/x/{i}.png", instruction="remove it", status="ok",
                              image_sha256=sha,
                              **{f"{k}_uri": st.uri_for(keys.output_key(prefix, k)) for k in keys.OUTPUT_FILES}))
    st.put_table(keys.results_key("bench"), results_table(rows))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--size", default="1024x768")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        st = ArtifactStore(os.path.join(d, "store"))
        rows = build(st, args.rows, w, h)
        t = time.perf_counter()
        write_run_index(st, "bench", rows)
        t_index = time.perf_counter() - t
        size = len(st.get_bytes(keys.run_index_key("bench")))
        t = time.perf_counter()
        export_run(st, keys.results_key("bench"), os.path.join(d, "export"))
        t_export = time.perf_counter() - t
    print(f"machine: {platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()})")
    print(f"rows {args.rows}, images {w}x{h}, local store")
    print(f"index.html: {t_index:.2f} s ({t_index / args.rows * 1000:.1f} ms/row), {size / 1e6:.2f} MB "
          f"({size / args.rows / 1e3:.1f} kB/row)")
    print(f"cielr export: {t_export:.2f} s ({t_export / args.rows * 1000:.1f} ms/row)")


if __name__ == "__main__":
    main()
