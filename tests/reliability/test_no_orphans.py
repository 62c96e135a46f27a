"""No process of ours outlives a killed run: `cielr run` without PREFECT_API_URL starts Prefect's
temporary API server as a subprocess; SIGKILL the run while it uses that server, and every process
the run had started is gone within seconds (the server watches its parent: flows/ephemeral_server.py).
"""

from __future__ import annotations

import time

import psutil
import pytest

pytestmark = pytest.mark.slow


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
        except psutil.NoSuchProcess:
            pass
    return out


def test_killed_run_leaves_no_ephemeral_server(forked_cli, photos3, tmp_path):
    manifest, _ = photos3
    log = tmp_path / "run.log"
    store = tmp_path / "store"
    p = forked_cli.start(["run", str(manifest), "--store", str(store), "--profile", "tiny", "--limit", "1"], log,
                         ephemeral=True)
    run = psutil.Process(p.pid)
    deadline = time.monotonic() + 240
    started: list[psutil.Process] = []
    # wait until the run's own server is up and the run is working through it (its flow has begun
    # and the store has its first stage output)
    while time.monotonic() < deadline and p.is_alive():
        started = run.children(recursive=True)
        servers = [c for c in started if "uvicorn" in " ".join(c.cmdline())]
        if servers and any((store / d).exists() for d in ("images", "seg", "prefect")):
            break
        time.sleep(0.2)
    assert p.is_alive(), f"the run ended before it could be killed: {log.read_text()[-2000:]}"
    assert [c for c in started if "uvicorn" in " ".join(c.cmdline())], "no ephemeral server was started"
    started = run.children(recursive=True)
    forked_cli.kill(p)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(started):
        time.sleep(0.2)
    assert _alive(started) == [], "processes outlived the killed run"
