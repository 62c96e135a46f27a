"""Run LLM-written spatial code where it can reach nothing.

The code is untrusted input: an instruction (written by whoever wrote the dataset) steers the LLM,
and an LLM endpoint can answer anything. What it must never reach: the worker's environment (API
keys, storage credentials), its files (store, model cache, project, home), other processes (the
worker, Prefect), the network, and the machine's resources beyond a small budget. See
``docs/security.md`` for the threat model and the attempts the test corpus makes.

The boundary is the operating system (:mod:`.isolation`): bubblewrap namespaces with nothing of the
parent in view, an unprivileged uid, ``no_new_privs``, a seccomp filter, rlimits, and a wall-clock
timeout after which the whole process tree is killed. The Python layers hold on their own as defence
in depth:

* :mod:`.static` (parent, before anything runs): size/nesting/node-count bounds checked before and
  after parsing, an allow-list of node types, of imports and of attribute names (:mod:`.api`);
* :mod:`.child` (in the sandbox): the code gets read-only namespaces with only the allowed numpy /
  math API (no module objects, so nothing numpy re-exports), a few builtins, and an audit hook whose
  deny list is a constant it cannot reach;
* :mod:`.output` (parent): the child's output is read with a size bound and a deadline, decoded only
  when shallow, and every value that enters the SSR is checked (no control characters, bounded).

Every failure is a :class:`SandboxError` (:class:`SandboxRefused` for static refusals,
:class:`SandboxUnavailable` where the OS layer is missing and ``isolation`` is ``os``), never another
exception. Entry point: :func:`run_code`. The code sees ``ssr`` (dict: ``image``, ``objects`` list with
id/label/bbox/area/centroid/depth/attributes), ``masks`` (``{id: HxW bool array}``), ``np``, ``math``,
and must assign ``result = {object_id: {"attribute_name": value, ...}, ...}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cielr_core.config import SandboxConfig
from cielr_core.reasoning.sandbox import isolation
from cielr_core.reasoning.sandbox.api import LINALG_API, MATH_API, NUMPY_API, SAFE_BUILTINS
from cielr_core.reasoning.sandbox.errors import SandboxError, SandboxRefused, SandboxUnavailable
from cielr_core.reasoning.sandbox.isolation import IsolationStatus
from cielr_core.reasoning.sandbox.output import clean_text, decode_output, validate_result
from cielr_core.reasoning.sandbox.static import MAX_CODE_CHARS, check_code
from cielr_core.ssr import Scene

_RUNNER = (Path(__file__).with_name("child.py")).read_text(encoding="utf-8")
_STDERR_CAP = 64_000


@dataclass
class SandboxResult:
    attributes: dict[int, dict[str, Any]]
    duration_s: float
    stderr: str = ""
    output_bytes: int = 0
    limits: dict[str, Any] = field(default_factory=dict)
    isolation: str = ""


def sandbox_status(cfg: SandboxConfig | None = None) -> IsolationStatus:
    """Can spatial code run here, and how isolated? Probed once per process (about 0.3 s)."""
    return isolation.isolation_status(cfg or SandboxConfig(), _probe)


def run_code(code: str, scene: Scene, cfg: SandboxConfig | None = None) -> SandboxResult:
    """Check, run and validate ``code`` against ``scene``; raises :class:`SandboxError` on any failure."""
    cfg = cfg or SandboxConfig()
    try:
        check_code(code)
    except SandboxError:
        raise
    except Exception as e:  # noqa: BLE001 - the checker must refuse, never crash
        raise SandboxRefused(f"refused: the static check failed ({type(e).__name__})") from None
    return _spawn(code, scene, cfg)


def _spawn(code: str, scene: Scene, cfg: SandboxConfig, *, python_layers: bool = True) -> SandboxResult:
    """Run already-checked code in the child (tests call it directly to exercise the child's own
    layers with code the static check would refuse; ``python_layers=False`` turns the child's Python
    layers off to show the OS layer holding on its own)."""
    status = sandbox_status(cfg)
    if not status.ok:
        raise SandboxUnavailable(status.detail)
    try:
        return _run(code, scene, cfg, status, python_layers=python_layers)
    except SandboxError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure is a clean SandboxError
        raise SandboxError(f"the sandbox failed: {type(e).__name__}: {clean_text(e, 200)}") from None


def _probe(cfg: SandboxConfig) -> dict[str, Any]:
    """The in-sandbox self-check behind :func:`sandbox_status` (raises when the sandbox cannot start)."""
    doc, _, _ = _execute({"probe": True, "code": ""}, {}, cfg, use_os=True, deadline_s=20.0)
    if not doc.get("ok"):
        raise RuntimeError(clean_text(doc.get("error"), 300))
    return doc["probe"]


def _run(code: str, scene: Scene, cfg: SandboxConfig, status: IsolationStatus, *,
         python_layers: bool) -> SandboxResult:
    t0 = time.perf_counter()
    payload = {"code": code, "ssr": scene.ssr.llm_view(), "python_layers": python_layers}
    doc, raw_len, stderr = _execute(payload, scene.masks, cfg, use_os=status.mode == "os",
                                    deadline_s=cfg.wall_timeout_s)
    duration = time.perf_counter() - t0
    if not doc.get("ok"):
        raise SandboxError(f"the code failed: {clean_text(doc.get('error'))}")
    attrs = validate_result(doc.get("result"), scene)
    return SandboxResult(attributes=attrs, duration_s=duration, stderr=stderr, output_bytes=raw_len,
                         limits=cfg.model_dump(), isolation=status.mode)


def _execute(payload: dict[str, Any], masks: dict[int, np.ndarray], cfg: SandboxConfig, *, use_os: bool,
             deadline_s: float) -> tuple[dict[str, Any], int, str]:
    """Start the child, feed it, read it under bounds, kill it at the deadline; the decoded document."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cielr-sandbox-") as d:
        os.chmod(d, 0o700)
        payload = dict(payload, memory_mb=cfg.memory_mb, cpu_seconds=cfg.cpu_seconds,
                       max_open_files=cfg.max_open_files, max_output_bytes=cfg.max_output_bytes,
                       uid=isolation.NOBODY, gid=isolation.NOBODY, builtins=list(SAFE_BUILTINS),
                       numpy_api=sorted(NUMPY_API), linalg_api=sorted(LINALG_API), math_api=sorted(MATH_API))
        bpf = _seccomp_or_none(required=use_os)
        payload["seccomp"] = bpf is not None
        if bpf is not None:
            Path(d, "filter.bpf").write_bytes(bpf)
        if use_os:
            payload["site"] = "/site"
            argv = isolation.bwrap_argv(isolation.find_bwrap(cfg.bwrap_path), d, _RUNNER)
        else:
            argv = [sys.executable, "-I", "-c", _RUNNER, d, isolation.owner_tag()]
        with open(os.path.join(d, "payload.json"), "w") as f:
            json.dump(payload, f)
        np.savez(os.path.join(d, "masks.npz"), **{f"m{k}": np.asarray(v, dtype=bool) for k, v in masks.items()})
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=d, env=isolation.child_env(), start_new_session=True, close_fds=True)
        out, err, overflow, timed_out = _collect(proc, cfg.max_output_bytes, deadline_s)
    duration = time.perf_counter() - t0
    stderr = clean_text(b"".join(err).decode("utf-8", "replace")[-2000:], 2000)
    if overflow:
        raise SandboxError(f"output exceeds the limit of {cfg.max_output_bytes} bytes; the process was killed")
    if timed_out:
        raise SandboxError(f"wall-clock timeout: the code ran longer than {deadline_s} s and was killed")
    rc = proc.returncode
    sig = -rc if rc is not None and rc < 0 else 0
    if use_os and rc is not None and 128 < rc < 128 + 65:  # bwrap reports a child's fatal signal as 128+n
        sig = rc - 128
    if sig:
        if sig == signal.SIGXCPU or sig == signal.SIGKILL and duration >= cfg.cpu_seconds:
            raise SandboxError(f"CPU time limit of {cfg.cpu_seconds} s exceeded; the process was killed")
        if sig == signal.SIGXFSZ:
            raise SandboxError("file size limit: the code tried to write a file")
        raise SandboxError(f"the sandbox process died from signal {signal.Signals(sig).name}")
    raw = b"".join(out)
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if use_os and rc not in (0, None) and not raw and "bwrap" in last:
        raise SandboxError(f"the sandbox could not start: {last}")
    return decode_output(raw, rc, last), len(raw), stderr


def _seccomp_or_none(required: bool) -> bytes | None:
    try:
        return isolation.seccomp_filter()
    except isolation.IsolationUnavailable as e:
        if required:
            raise SandboxUnavailable(f"spatial code is off: {e}") from None
        return None


def _reader(stream, cap: int, buf: list[bytes], overflow: threading.Event) -> None:
    total = 0
    try:
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                return
            if total + len(chunk) > cap:
                buf.append(chunk[: max(0, cap - total)])
                overflow.set()
                return
            buf.append(chunk)
            total += len(chunk)
    except (OSError, ValueError):
        return


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _collect(proc: subprocess.Popen, cap: int, deadline_s: float):
    """Read stdout/stderr under a size cap; kill the process group at the deadline or on overflow.
    The parent never waits on a pipe: readers are daemon threads joined with a bound."""
    out: list[bytes] = []
    err: list[bytes] = []
    overflow, err_over = threading.Event(), threading.Event()
    threads = [threading.Thread(target=_reader, args=(proc.stdout, cap, out, overflow), daemon=True),
               threading.Thread(target=_reader, args=(proc.stderr, _STDERR_CAP, err, err_over), daemon=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + deadline_s
    timed_out = False
    try:
        while True:
            try:
                proc.wait(timeout=0.02)
                break
            except subprocess.TimeoutExpired:
                pass
            if overflow.is_set():
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
    finally:
        _kill(proc)  # also reaps anything left in the group once the leader is gone
        proc.wait()
        for t in threads:
            t.join(timeout=1.0)
        for s in (proc.stdout, proc.stderr):
            try:
                s.close()
            except OSError:
                pass
    return out, err, overflow.is_set(), timed_out


__all__ = [
    "MAX_CODE_CHARS",
    "IsolationStatus",
    "SandboxError",
    "SandboxRefused",
    "SandboxResult",
    "SandboxUnavailable",
    "check_code",
    "run_code",
    "sandbox_status",
    "validate_result",
]
