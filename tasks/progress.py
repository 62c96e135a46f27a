"""A dataset run's progress events and its stop request, in-process.

Whatever runs the rows of a chunk (one after the other, several images in flight, Dask) calls
:func:`row_finished` once for every row that ends, in the process that runs the flow; listeners
(the flow's progress artifact, the CLI's live display) hear it at once, not per chunk. The flow
announces the run with :func:`run_started`.

:func:`request_stop` (SIGTERM, a Prefect cancellation) asks the run to stop: the stage recorder
raises :class:`RunStopped` before the next stage, rows not yet started end ``cancelled``, and the
flow writes results.parquet for what finished. :func:`stop_on_sigterm` installs the handler for a
block (Prefect's flow engine installs its own on entering a flow, so each flow body installs ours).
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Protocol

log = logging.getLogger(__name__)


class Listener(Protocol):
    def run_started(self, total: int, rejected: int, name: str) -> None: ...

    def row_finished(self, row: Any) -> None: ...


_listeners: list[Listener] = []
_lock = threading.Lock()
_stop = threading.Event()
_stop_reason: list[str] = []


class RunStopped(Exception):
    """The run was asked to stop (SIGTERM or cancellation) before this row finished."""

    transient = False


@contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    with _lock:
        _listeners.append(listener)
    try:
        yield listener
    finally:
        with _lock:
            _listeners.remove(listener)


def _each(method: str, *args: Any) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        fn = getattr(listener, method, None)
        if fn is None:
            continue
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a display must never fail a row
            log.exception("progress listener %r failed on %s", listener, method)


def run_started(total: int, rejected: int = 0, name: str = "") -> None:
    """A run over ``total`` rows (``rejected`` of them invalid, reported as finished right after)."""
    _each("run_started", total, rejected, name)


def row_finished(row: Any) -> None:
    """One row ended (a tasks.refs.ResultRow, any status). Call it once per row, as soon as it ends."""
    _each("row_finished", row)


def request_stop(reason: str) -> None:
    if not _stop.is_set():
        _stop_reason.append(reason)
        _stop.set()


def stop_requested() -> str | None:
    """Why the run was asked to stop, or None."""
    return _stop_reason[0] if _stop.is_set() else None


def clear_stop() -> None:
    _stop.clear()
    _stop_reason.clear()


def check_stop() -> None:
    """Raise :class:`RunStopped` when the run was asked to stop."""
    reason = stop_requested()
    if reason is not None:
        raise RunStopped(f"run stopped ({reason}) before this row finished")


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """For this block, SIGTERM requests a stop instead of killing the process (main thread only;
    elsewhere a no-op). The previous handler comes back afterwards."""
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: request_stop("SIGTERM"))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sigterm_requests_stop() -> None:
    """From now on SIGTERM requests a stop (main thread only). For the body of a subflow: Prefect's
    engine puts back the handler it found when the subflow ends."""
    try:
        signal.signal(signal.SIGTERM, lambda signum, frame: request_stop("SIGTERM"))
    except ValueError:  # not the main thread
        pass
