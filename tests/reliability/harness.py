"""Pieces shared by the reliability tests: `cielr` in a forked child (killable at any moment), a
small manifest of real photos, and checks that a store holds only whole objects.

Each `cielr run` would spend ~15 s importing torch, transformers, diffusers and prefect before doing
anything, which would make twenty killed runs take minutes. So the test starts one fork server
(multiprocessing's ``forkserver``) that imports those modules once; every run is a fresh process
forked from it that runs the real `cielr run` command line (same code path, its own models, its
own Prefect client) and can be SIGKILLed at any point like any other process.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

PRELOAD = ["cli.main", "flows.edit_dataset"]


def _child(args: list[str], env: dict[str, str], api_url: str | None, log_path: str) -> None:
    """Run the `cielr` command line with ``args`` in this (forked) process; exit with its code."""
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code: Any = 0
    try:
        # Prefect's process-wide settings, read again from this environment: the run (and any
        # thread it starts) talks to the test server, or starts a temporary one itself
        if api_url:
            os.environ["PREFECT_API_URL"] = api_url
        else:
            os.environ.pop("PREFECT_API_URL", None)
            os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"  # a busy test machine
        import prefect.context

        prefect.context.refresh_global_settings_context()
        from cli.main import app

        try:
            app(args, prog_name="cielr")
        except SystemExit as e:
            code = e.code
    except BaseException as e:  # noqa: BLE001 - reported through the exit code and the log
        print(f"child failed: {type(e).__name__}: {e}", flush=True)
        code = 99
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


class ForkedCli:
    """Starts `cielr` runs as processes forked from a server that has the heavy modules imported."""

    def __init__(self, api_url: str | None, env: dict[str, str]):
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.api_url = api_url
        self.env = env

    def start(self, args: list[str], log_path: Path, *, ephemeral: bool = False,
              **extra_env: str) -> multiprocessing.Process:
        """A run of `cielr ARGS`; ``ephemeral=True``: without the test server's URL, so the run
        starts Prefect's temporary server itself, as a plain `cielr run` does."""
        api_url = None if ephemeral else self.api_url
        p = self.ctx.Process(target=_child, args=(args, {**self.env, **extra_env}, api_url, str(log_path)),
                             daemon=False)
        p.start()
        return p

    @staticmethod
    def kill(p: multiprocessing.Process) -> None:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.join()

    @staticmethod
    def stop_server() -> None:
        from multiprocessing import forkserver

        stop = getattr(forkserver._forkserver, "_stop", None)
        if stop is not None:
            stop()


def small_manifest(folder: Path, ciebench: Path, n: int, side: int = 96) -> tuple[Path, list[dict]]:
    """The first ``n`` CIEBench photos shrunk to at most ``side`` pixels, with their instructions."""
    from PIL import Image

    from cielr_core.manifest import write_manifest

    meta = json.loads((ciebench / "updated_data.json").read_text())
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for sid in sorted(meta, key=int)[:n]:
        im = Image.open(ciebench / meta[sid]["image path"]).convert("RGB")
        im.thumbnail((side, side))
        dst = images / f"ciebench-{sid}.png"
        im.save(dst)
        rows.append({"image_id": f"ciebench-{sid}", "image_uri": str(dst), "instruction": meta[sid]["instruction"]})
    manifest = folder / "manifest.parquet"
    write_manifest(rows, str(manifest))
    return manifest, rows


def leftover_temp_files(root: Path) -> list[str]:
    """Temporary files of writes that a kill interrupted (``.tmp-*`` beside their target): never
    listed by the store nor read by anything, but left on disk."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".tmp-*"))


def unreadable_objects(root: Path, skip_prefect_records: bool = False) -> list[str]:
    """Objects a reader could trip on: JSON / PNG / Parquet / NumPy objects and Prefect records
    that do not parse (temporary files are left to :func:`leftover_temp_files`)."""
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    bad = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if skip_prefect_records and rel.startswith("prefect/"):
            continue
        if any(seg.startswith(".tmp-") for seg in rel.split("/")):
            continue
        data = p.read_bytes()
        try:
            if rel.endswith(".json"):
                json.loads(data)
            elif rel.endswith(".png"):
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
            elif rel.endswith(".parquet"):
                pq.read_table(io.BytesIO(data))
            elif rel.endswith(".npy"):
                np.load(io.BytesIO(data), allow_pickle=False)
            elif rel.startswith("prefect/"):
                json.loads(data)  # Prefect's result and cache records are JSON documents
        except Exception as e:  # noqa: BLE001
            bad.append(f"{rel}: {type(e).__name__}: {e}")
    return bad
