"""Services the orchestration benchmarks start for themselves: a private PostgreSQL cluster and a
dedicated `prefect server` process, each on 127.0.0.1 and a free port, stopped afterwards.

PostgreSQL comes from the OS (Debian's ``postgresql``: ``initdb`` / ``pg_ctl`` on PATH or under
/usr/lib/postgresql/<version>/bin). PostgreSQL refuses to run as root, so when the benchmark runs
as root the cluster's folder is handed to ``nobody`` and the server runs as that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    env: dict[str, str]
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not cands:
        raise RuntimeError(f"PostgreSQL's {name} not found (apt-get install postgresql)")
    return cands[-1]


def _as_postgres_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *cmd]


def _run(cmd: list[str], env: dict[str, str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/")
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")


@contextmanager
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster in a fresh temporary folder (removed afterwards); yields an
    asyncpg URL for Prefect. Durability is off (fsync, synchronous_commit): a benchmark's database."""
    workdir = Path(tempfile.mkdtemp(prefix="cielr-bench-pg-"))
    os.chmod(workdir, 0o755)
    data = workdir / "pgdata"
    if os.geteuid() == 0:
        shutil.chown(workdir, "nobody", "nogroup")
    port = free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    try:
        _run(_as_postgres_user([_pg_bin("initdb"), "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8"]),
             env)
        opts = (f"-p {port} -k {workdir} -h 127.0.0.1 -c max_connections=200 -c fsync=off "
                "-c synchronous_commit=off")
        _run(_as_postgres_user([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(workdir / "postgres.log"), "-o", opts,
                                "-w", "start"]), env)
        try:
            yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(_as_postgres_user([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, env=env, cwd="/")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def prefect_server(workdir: Path, database_url: str | None = None) -> Iterator[Server]:
    """`prefect server start` on a free port (SQLite in ``workdir``, or ``database_url``); yields the
    environment a client process needs (PREFECT_API_URL, PREFECT_HOME, analytics off) and the
    server's process id."""
    import httpx

    port = free_port()
    home = workdir / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_KEY", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(workdir / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start: {(workdir / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(env={k: env[k] for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_API_URL")},
                     pid=proc.pid)
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()
