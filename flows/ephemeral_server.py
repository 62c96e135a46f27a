"""Prefect's temporary (ephemeral) API server dies with the process that started it.

Without ``PREFECT_API_URL`` every `cielr` command starts Prefect's ephemeral API as a subprocess
(``prefect.server.api.server.SubprocessASGIServer``: ``python -m uvicorn ...``), stopped by an
``atexit`` hook. A process that is SIGKILLed, or OOM-killed, runs no ``atexit`` hook, so the server
(~230 MB) used to outlive it, orphaned, for good.

:func:`install` makes that subprocess watch its parent: it starts the same uvicorn command behind a
few lines of Python that poll the parent's pid (every 0.5 s) and, once the parent is gone, stop the
server with SIGTERM (uvicorn's graceful shutdown), then exit outright if it has not stopped 10 s
later. A parent-death signal (``PR_SET_PDEATHSIG``) would not do: Linux sends it when the *thread*
that forked the child ends, and Prefect may start the server from a short-lived thread.
Normal runs are unchanged: the server starts, answers and is stopped at exit exactly as before.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import subprocess
import sys
from typing import Any

# Runs as `python -c WATCHDOG <parent pid> <uvicorn arguments...>`.
WATCHDOG = """\
import os, runpy, signal, sys, threading, time
parent = int(sys.argv[1])
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    os._exit(1)
threading.Thread(target=watch, name="cielr-parent-watch", daemon=True).start()
sys.argv = ["uvicorn"] + sys.argv[2:]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""

_installed = False


def watched_command(command: list[str], parent_pid: int) -> list[str]:
    """``[python, -m, uvicorn, args...]`` -> the same server behind the parent watchdog."""
    if command[1:3] != ["-m", "uvicorn"]:
        return command  # not the command this was written for: leave it alone
    return [command[0], "-c", WATCHDOG, str(parent_pid), *command[3:]]


SERVER_MODULE = "prefect.server.api.server"


def install() -> None:
    """Make every ephemeral server that this process starts die with it (idempotent).

    Prefect's server module is heavy to import (it builds the whole API), and a process that talks
    to a real server never needs it, so it is patched when it is first imported, not imported here."""
    global _installed
    if _installed:
        return
    _installed = True
    if SERVER_MODULE in sys.modules:
        _patch(sys.modules[SERVER_MODULE])
    else:
        sys.meta_path.insert(0, _PatchOnImport())


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of Prefect's server module so it is patched on import."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != SERVER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def _patch(prefect_server: Any) -> None:
    cls = getattr(prefect_server, "SubprocessASGIServer", None)
    if cls is None or not hasattr(cls, "_run_uvicorn_command"):  # pragma: no cover - another Prefect
        return
    original = cls._run_uvicorn_command

    def _run_uvicorn_command(self: Any) -> subprocess.Popen:
        real_popen = subprocess.Popen

        class WatchedPopen(real_popen):  # type: ignore[misc, valid-type]
            def __init__(self, args: Any = None, *a: Any, **kw: Any):
                if isinstance(args, list) and args and args[0] == sys.executable:
                    args = watched_command(args, os.getpid())
                super().__init__(args, *a, **kw)

        # the server module's own name for subprocess, for this one call: Prefect's code still
        # builds the command and its environment
        prefect_server.subprocess = _SubprocessShim(WatchedPopen)
        try:
            return original(self)
        finally:
            prefect_server.subprocess = subprocess

    cls._run_uvicorn_command = _run_uvicorn_command


class _SubprocessShim:
    """The ``subprocess`` module as Prefect's server module sees it during one call, with Popen
    swapped for the watched one (the real module is never patched)."""

    def __init__(self, popen: type):
        self.Popen = popen

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)
