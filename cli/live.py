"""What a person sees while `cielr run` / `demo` / `eval` work: a live progress display (rich) on a
terminal, one line per finished row otherwise; Prefect's log lines in a log file (``--verbose``
brings them back to the terminal); SIGTERM stops the run gracefully; exit codes from the rows.

The flow runs in this process and announces each finished row through :mod:`tasks.progress`;
:class:`LiveDisplay` and :class:`RowLines` are listeners.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import typer

#: what `--help` and the README say about exit codes
EXIT_CODES = ("Exit codes: 0 every row ended ok or no_target; 1 a row failed, was invalid or was cancelled "
              "(results are still written and their URI is still the last line); 2 a usage or configuration "
              "error stopped the run before any row (bad option, missing or non-Parquet manifest, missing "
              "columns, missing model, unreachable store).")

GOOD = ("ok", "no_target")


def exit_code(statuses: list[str]) -> int:
    """0 when every row ended ok or no_target (or there are none), else 1."""
    return 0 if all(s in GOOD for s in statuses) else 1


def log_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cielr" / "logs"


def quiet_progress_bars(verbose: bool) -> None:
    """No model-loading progress bars over the display (unless ``verbose``). tqdm and huggingface_hub
    read these variables when they are imported: call this first thing in a command."""
    if verbose:
        return
    for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        if var not in os.environ:
            os.environ[var] = "1"
            _env_set.append(var)
    for name, fn in (("diffusers.utils.logging", "disable_progress_bar"),
                     ("transformers.utils.logging", "disable_progress_bar")):
        if name in sys.modules:  # imported already: switch their bars off directly
            getattr(sys.modules[name], fn)()


# -- the model libraries' own progress bars and log handlers ----------------------------------------
# diffusers and transformers print their progress bars ("Loading pipeline components...") and their
# warnings through handlers of their own, straight to stderr, over the display. Their switches live
# in their logging modules, which are slow to import (diffusers' ~7 s), so they are flipped when a
# command first imports them (or at once when already imported), and flipped back by logs_back().


def _quiet_transformers(m: Any) -> None:
    m.disable_progress_bar()
    m.disable_default_handler()  # its records go to the root logger, so into the log file
    m.enable_propagation()


def _loud_transformers(m: Any) -> None:
    m.enable_progress_bar()
    m.disable_propagation()
    m.enable_default_handler()


_LIBRARIES: dict[str, tuple[Any, Any]] = {
    "transformers.utils.logging": (_quiet_transformers, _loud_transformers),
    "diffusers.utils.logging": (lambda m: m.disable_progress_bar(), lambda m: m.enable_progress_bar()),
}
_quieted: list[str] = []


class _QuietOnImport:
    """A meta-path finder that finds nothing itself: it quiets a library's logging module as it is
    imported (its loader runs first), then steps aside once every module is done."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _LIBRARIES or name in _quieted:
            return None
        import importlib.util

        sys.meta_path.remove(self)  # find the real spec without coming back here
        try:
            spec = importlib.util.find_spec(name)
        finally:
            if any(n not in _quieted and n != name for n in _LIBRARIES):
                sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_quiet(module: Any) -> None:
            exec_module(module)
            _quiet_library(name, module)

        spec.loader.exec_module = exec_and_quiet  # type: ignore[method-assign]
        return spec


_hook = _QuietOnImport()


def _quiet_library(name: str, module: Any) -> None:
    if name not in _quieted:
        try:
            _LIBRARIES[name][0](module)
        except AttributeError:  # pragma: no cover - another version of the library
            return
        _quieted.append(name)


def quiet_libraries() -> None:
    """Quiet the model libraries' bars and handlers now, or when they are imported."""
    for name in _LIBRARIES:
        if name in sys.modules:
            _quiet_library(name, sys.modules[name])
    if any(n not in _quieted for n in _LIBRARIES) and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


def loud_libraries() -> None:
    """Undo :func:`quiet_libraries`."""
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    while _quieted:
        name = _quieted.pop()
        try:
            _LIBRARIES[name][1](sys.modules[name])
        except (AttributeError, KeyError):  # pragma: no cover
            pass


def logs_to_file(verbose: bool) -> Path | None:
    """Send Prefect's and the libraries' log lines to a file instead of the terminal (unless
    ``verbose``); returns the file. Tracebacks of errors land there too."""
    if verbose:
        return None
    d = log_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"cielr-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}.log"
    import prefect  # noqa: F401 - configures logging first, so that we can move its console handler

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(_RunFormatter())
    root = logging.getLogger()
    _saved.append((list(root.handlers), {n: logging.getLogger(n).level for n in _LOGGERS}, handler))
    logging.captureWarnings(True)  # library warnings to the file too
    quiet_progress_bars(verbose)
    quiet_libraries()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    # the per-task lines (INFO) reach the file; the API still gets them for the dashboard
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    return path


_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs", "cielr")
_env_set: list[str] = []


class _RunFormatter(logging.Formatter):
    """Time, level, logger, the flow or task run (``segment[cie-12]``) when there is one, message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(run)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        record.run = f" [{run}]" if run else ""
        return super().format(record)
_saved: list[tuple[list[logging.Handler], dict[str, int], logging.Handler]] = []


_exit_quiet = False


def _quiet_prefect_at_exit() -> None:
    """At exit, Prefect stops its temporary API server and logs "Stopping temporary server on ..." at
    INFO through the "prefect" logger, whose console handler is back by then: drawn after the
    display. Registered after the flow run (atexit runs hooks last-in first-out, so this one runs
    before Prefect's), it leaves only Prefect's warnings and errors on the terminal."""
    logging.getLogger("prefect").setLevel(logging.WARNING)


def quiet_prefect_at_exit() -> None:
    global _exit_quiet
    if not _exit_quiet:
        import atexit

        atexit.register(_quiet_prefect_at_exit)
        _exit_quiet = True


def logs_back() -> None:
    """Undo :func:`logs_to_file` (the process goes on, e.g. under a test runner)."""
    while _env_set:  # first: huggingface_hub refuses (with a warning) to re-enable bars while it is set
        os.environ.pop(_env_set.pop(), None)
    loud_libraries()  # warnings are still captured into the log file here
    logging.captureWarnings(False)
    while _saved:
        handlers, levels, handler = _saved.pop()
        root = logging.getLogger()
        root.removeHandler(handler)
        handler.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def log_exception(exc: BaseException) -> None:
    """The traceback into the log file (when one is open; the terminal gets the `error:` line only)."""
    if _saved:
        logging.getLogger("cielr").error("run stopped: %s", exc, exc_info=exc)


class RowLines:
    """Not a terminal: one concise line per finished row on stderr (stdout keeps only the URI)."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0

    def run_started(self, total: int, rejected: int, name: str) -> None:
        self.total += total
        typer.echo(f"run {name}: {total} rows ({rejected} invalid)", err=True)

    def row_finished(self, row: Any) -> None:
        self.done += 1
        cached = " cached" if row.task_runs and row.cache_hits == row.task_runs else ""
        secs = f" {row.seconds:.1f}s" if row.seconds else ""
        err = f": {row.error}" if row.status not in GOOD and row.error else ""
        typer.echo(f"[{self.done}/{self.total}] {row.image_id} {row.status}{secs}{cached}{err}", err=True)

    def __enter__(self) -> "RowLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class LiveDisplay:
    """A terminal: rich progress bar with rows done of total, ok / failed / cached counts, rate and ETA."""

    def __init__(self, title: str) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("rows"),
                                 TextColumn("[green]ok {task.fields[ok]}[/] [red]failed {task.fields[failed]}[/] "
                                            "[cyan]cached {task.fields[cached]}[/]"),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=self.console, transient=False)
        self.task = self.progress.add_task(title, total=None, ok=0, failed=0, cached=0, rate="")
        self.counts = {"ok": 0, "failed": 0, "cached": 0}
        self.t0 = time.monotonic()
        self.done = 0

    def run_started(self, total: int, rejected: int, name: str) -> None:
        current = self.progress.tasks[0].total or 0
        self.progress.update(self.task, total=current + total, description=name or "rows")

    def row_finished(self, row: Any) -> None:
        self.done += 1
        self.counts["ok" if row.status in GOOD else "failed"] += 1
        if row.task_runs and row.cache_hits == row.task_runs:
            self.counts["cached"] += 1
        rate = self.done / max(1e-9, time.monotonic() - self.t0)
        self.progress.update(self.task, advance=1, rate=f"{rate:.2f} rows/s" if rate >= 0.1 else f"{60 * rate:.1f} rows/min",
                             **self.counts)
        if row.status not in GOOD:
            self.progress.console.print(f"[red]{row.image_id}: {row.status}[/] {row.error or ''}", markup=True,
                                        highlight=False)

    def __enter__(self) -> "LiveDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


def _on_sigterm(signum: int, frame: Any) -> None:
    from tasks.progress import request_stop

    request_stop("SIGTERM")


@contextmanager
def run_console(title: str, verbose: bool, rows: bool = True) -> Iterator[Any]:
    """Around a flow call: logs to a file (said on stderr), the row display, SIGTERM as a stop request
    (the flows install the same while they run; Prefect's engine installs its own in between)."""
    from tasks import progress

    path = logs_to_file(verbose)
    if path is not None:
        typer.echo(f"log: {path} (--verbose shows it here)", err=True)
    display: Any = LiveDisplay(title) if rows and sys.stderr.isatty() and not verbose else RowLines()
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. a test runner's thread)
        previous = None
    try:
        with progress.listening(display), display:
            yield display
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        progress.clear_stop()
        logs_back()
        if path is not None:  # not --verbose: nothing of Prefect's INFO after the display either
            quiet_prefect_at_exit()
