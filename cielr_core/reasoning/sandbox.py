"""Run LLM-written spatial code in a separate, locked-down process.

Layers, each of which refuses on its own:

1. **AST allow-list** (in the parent, before anything runs): only plain statements and
   expressions; ``import`` only of ``numpy`` / ``math``; no name or attribute starting with ``_``
   (so no dunder escapes such as ``().__class__.__bases__[0].__subclasses__()``); no
   ``open/exec/eval/compile/__import__/getattr/setattr/globals/vars/...``; no numpy file or ctypes
   entry points (``np.load``, ``np.fromfile``, ``tofile``, ``np.ctypeslib``, ...); no ``str.format``
   (attribute lookups inside format strings); no class definitions, ``global``, ``with``, ``async``
   or generators. A refusal raises :class:`SandboxRefused` naming the node and line: the code never
   runs, not in the parent and not in a child.
2. **A separate process**: ``sys.executable -I`` (isolated mode) with a tiny runner; inputs are
   data (the SSR as a dict — its LLM view — and the masks as boolean numpy arrays in an ``.npz``
   read with ``allow_pickle=False``), read before any limit is set.
3. **rlimits** in the child: CPU seconds, address space (``memory_mb``), open files, file size 0,
   no new processes, no core dumps; and a **wall-clock timeout** enforced by the parent, which kills
   the child's process group.
4. **An audit hook** in the child, installed before the code runs, denying file opens, ``os.*``
   (fork, exec, system, remove, ...), sockets, subprocess, ctypes, imports and further
   ``exec``/``compile`` calls.
5. **Restricted builtins** and an ``__import__`` that hands out only the pre-loaded numpy and math.
6. **Output**: the child prints one JSON document; the parent reads at most ``max_output_bytes``
   (more kills the child) and validates it: ``result`` must map existing object ids to
   ``{attribute_name: JSON value}``.

The code sees ``ssr`` (dict: ``image``, ``objects`` list with id/label/bbox/area/centroid/depth/
attributes), ``masks`` (``{id: HxW bool array}``), ``np``, ``math``, and must assign
``result = {object_id: {"attribute_name": value, ...}, ...}``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cielr_core.config import SandboxConfig
from cielr_core.ssr import Scene

ALLOWED_IMPORTS = frozenset({"numpy", "math"})

FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "__import__", "getattr", "setattr", "delattr", "hasattr", "globals",
    "locals", "vars", "dir", "input", "breakpoint", "help", "memoryview", "type", "object", "super",
    "classmethod", "staticmethod", "property", "id", "exit", "quit", "copyright", "credits", "license",
    "print", "bytearray", "callable", "issubclass", "format", "os", "sys", "subprocess", "socket",
    "builtins", "importlib", "ctypes", "io", "pathlib", "shutil",
})

FORBIDDEN_ATTRS = frozenset({
    # file and process entry points of numpy / arrays
    "load", "loads", "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile",
    "tofile", "fromregex", "memmap", "open_memmap", "dump", "dumps", "ctypes", "ctypeslib", "lib", "f2py",
    "testing", "distutils", "DataSource", "system", "popen", "fork", "spawn", "exec", "eval",
    # attribute lookups inside format strings; frames and code objects
    "format", "format_map", "gi_frame", "gi_code", "f_globals", "f_locals", "f_back", "f_builtins",
    "tb_frame", "cr_frame", "ag_frame", "mro",
})

_ALLOWED_NODES: tuple[type, ...] = (
    ast.Module, ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.While, ast.If, ast.Break,
    ast.Continue, ast.Pass, ast.FunctionDef, ast.Return, ast.Lambda, ast.ListComp, ast.DictComp, ast.SetComp,
    ast.GeneratorExp, ast.comprehension, ast.Compare, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.IfExp, ast.Call,
    ast.Attribute, ast.Subscript, ast.Slice, ast.Name, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set,
    ast.Starred, ast.keyword, ast.arguments, ast.arg, ast.Import, ast.ImportFrom, ast.alias, ast.Assert,
    ast.JoinedStr, ast.FormattedValue, ast.Load, ast.Store, ast.Del, ast.Delete, ast.Try, ast.ExceptHandler,
    ast.Raise, ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.expr_context,
)
if hasattr(ast, "TryStar"):  # pragma: no cover - 3.11+
    pass  # except* stays refused

MAX_CODE_CHARS = 20_000
ATTR_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
MAX_ATTRS_PER_OBJECT = 16


class SandboxError(RuntimeError):
    """The code could not run to a valid result; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SandboxRefused(SandboxError):
    """The code was refused by the static checks and never ran."""


@dataclass
class SandboxResult:
    attributes: dict[int, dict[str, Any]]
    duration_s: float
    stderr: str = ""
    output_bytes: int = 0
    limits: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# static checks
def check_code(code: str) -> ast.Module:
    """Parse and check ``code`` against the allow-list; raises :class:`SandboxRefused`."""
    if not isinstance(code, str) or not code.strip():
        raise SandboxRefused("refused: the code is empty")
    if len(code) > MAX_CODE_CHARS:
        raise SandboxRefused(f"refused: the code is longer than {MAX_CODE_CHARS} characters")
    try:
        tree = ast.parse(code, mode="exec")
    except SyntaxError as e:
        raise SandboxRefused(f"refused: syntax error at line {e.lineno}: {e.msg}") from None
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if not isinstance(node, _ALLOWED_NODES):
            raise SandboxRefused(f"refused: {type(node).__name__} is not allowed (line {line})")
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name not in ALLOWED_IMPORTS:
                    raise SandboxRefused(f"refused: import of {a.name!r} (only numpy and math) (line {line})")
        elif isinstance(node, ast.ImportFrom):
            if node.level or node.module not in ALLOWED_IMPORTS:
                raise SandboxRefused(f"refused: import from {node.module!r} (only numpy and math) (line {line})")
            for a in node.names:
                if a.name == "*" or a.name.startswith("_") or a.name in FORBIDDEN_ATTRS:
                    raise SandboxRefused(f"refused: import of {a.name!r} from {node.module} (line {line})")
        elif isinstance(node, ast.Name):
            if node.id.startswith("_"):
                raise SandboxRefused(f"refused: name {node.id!r} starts with an underscore (line {line})")
            if node.id in FORBIDDEN_NAMES:
                raise SandboxRefused(f"refused: use of {node.id!r} (line {line})")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise SandboxRefused(f"refused: attribute {node.attr!r} starts with an underscore (line {line})")
            if node.attr in FORBIDDEN_ATTRS:
                raise SandboxRefused(f"refused: attribute {node.attr!r} (line {line})")
        elif isinstance(node, ast.FunctionDef):
            if node.decorator_list:
                raise SandboxRefused(f"refused: decorators (line {line})")
            if node.name.startswith("_"):
                raise SandboxRefused(f"refused: function name {node.name!r} (line {line})")
        elif isinstance(node, ast.arg):
            if node.arg.startswith("_"):
                raise SandboxRefused(f"refused: argument name {node.arg!r} (line {line})")
        elif isinstance(node, ast.alias):
            if node.asname and (node.asname.startswith("_") or node.asname in FORBIDDEN_NAMES):
                raise SandboxRefused(f"refused: import alias {node.asname!r} (line {line})")
        elif isinstance(node, ast.keyword):
            if node.arg and node.arg.startswith("_"):
                raise SandboxRefused(f"refused: keyword {node.arg!r} (line {line})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            if (b"__" if isinstance(node.value, bytes) else "__") in node.value:
                raise SandboxRefused(f"refused: a string constant containing '__' (line {line})")
        elif isinstance(node, ast.ExceptHandler):
            if node.name and node.name.startswith("_"):
                raise SandboxRefused(f"refused: exception name {node.name!r} (line {line})")
    return tree


# ---------------------------------------------------------------------------------------------
# the child
_RUNNER = r'''
import sys, json, math, resource
import numpy as np
d = sys.argv[1]
with open(d + "/payload.json", "r") as f:
    P = json.load(f)
with np.load(d + "/masks.npz", allow_pickle=False) as z:
    masks = {int(k[1:]): np.array(z[k], dtype=bool) for k in z.files}
code = compile(P["code"], "<llm-code>", "exec")
out = sys.stdout
cap = int(P["max_output_bytes"])

def emit(obj):
    try:
        s = json.dumps(obj, allow_nan=False, default=conv)
    except (TypeError, ValueError) as e:
        s = json.dumps({"ok": False, "error": "result is not JSON-serialisable: %s" % e})
    except MemoryError:
        s = '{"ok": false, "error": "MemoryError: memory limit exceeded while serialising the result"}'
    if len(s) > cap:
        s = json.dumps({"ok": False, "error": "output of %d bytes exceeds the limit of %d bytes" % (len(s), cap)})
    out.write(s)
    out.flush()

def conv(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        if o.size > 100000:
            raise ValueError("array of %d elements in the result" % o.size)
        return o.tolist()
    raise TypeError("%s is not JSON-serialisable" % type(o).__name__)

mem = int(P["memory_mb"]) * 1024 * 1024
cpu = int(P["cpu_seconds"])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_NOFILE, (int(P["max_open_files"]), int(P["max_open_files"])))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))

DENY_PREFIX = ("open", "os.", "socket.", "subprocess.", "ctypes.", "shutil.", "pty.", "mmap.", "fcntl.",
               "resource.", "sys._getframe", "sys._current_frames", "sys.setprofile", "sys.settrace",
               "import", "compile", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "glob.",
               "tempfile.", "sqlite3.", "marshal.", "pickle.", "code.", "cpython.", "object.__",
               "function.__", "gc.", "signal.", "syslog.", "winreg.", "_posixsubprocess", "sys.addaudithook")
state = {"exec": 1}

def hook(event, args):
    if event == "exec":
        if state["exec"] > 0:
            state["exec"] -= 1
            return
        raise PermissionError("sandbox: exec denied")
    if event.startswith(DENY_PREFIX):
        raise PermissionError("sandbox: %s denied" % event)

MODS = {"numpy": np, "math": math}

REAL_IMPORT = __import__

def imp(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name in MODS:
        return MODS[name]
    # numpy's C code imports its own submodules lazily through the caller's builtins; the code
    # itself cannot ask for them (the static check allows only `numpy` and `math`), and loading
    # one that is not yet in memory is denied by the audit hook (it needs open()).
    if level == 0 and name.startswith("numpy.") and name in sys.modules:
        return REAL_IMPORT(name, globals, locals, fromlist, level)
    raise ImportError("sandbox: import of %r denied" % name)

import builtins as B
SAFE = ("abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int",
        "isinstance", "iter", "len", "list", "map", "max", "min", "next", "pow", "range", "repr", "reversed",
        "round", "set", "slice", "sorted", "str", "sum", "tuple", "zip", "True", "False", "None",
        "ArithmeticError", "Exception", "IndexError", "KeyError", "TypeError", "ValueError",
        "ZeroDivisionError", "StopIteration", "AssertionError", "MemoryError", "RuntimeError")
builtins = {k: getattr(B, k) for k in SAFE if hasattr(B, k)}
builtins["__import__"] = imp
g = {"__builtins__": builtins, "__name__": "sandbox", "np": np, "math": math, "ssr": P["ssr"], "masks": masks,
     "result": {}}
sys.addaudithook(hook)
try:
    exec(code, g)
    res = g.get("result")
    emit({"ok": True, "result": res})
except MemoryError:
    g = None
    emit({"ok": False, "error": "MemoryError: the memory limit of %d MB was exceeded" % P["memory_mb"]})
except RecursionError:
    emit({"ok": False, "error": "RecursionError: maximum recursion depth exceeded"})
except BaseException as e:
    msg = str(e)
    if len(msg) > 500:
        msg = msg[:500] + "..."
    emit({"ok": False, "error": "%s: %s" % (type(e).__name__, msg)})
'''


def _reader(stream, cap: int, buf: list[bytes], overflow: threading.Event) -> None:
    total = 0
    try:
        while True:
            chunk = stream.read(65536)
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


def run_code(code: str, scene: Scene, cfg: SandboxConfig | None = None) -> SandboxResult:
    """Check, run and validate ``code`` against ``scene``; raises :class:`SandboxError` on any failure."""
    cfg = cfg or SandboxConfig()
    check_code(code)
    return _spawn(code, scene, cfg)


def _spawn(code: str, scene: Scene, cfg: SandboxConfig) -> SandboxResult:
    """Run already-checked code in the child (tests call it directly to exercise the child's own
    layers — audit hook, rlimits, restricted builtins — with code the static check would refuse)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cielr-sandbox-") as d:
        payload = {
            "code": code, "ssr": scene.ssr.llm_view(), "memory_mb": cfg.memory_mb, "cpu_seconds": cfg.cpu_seconds,
            "max_open_files": cfg.max_open_files, "max_output_bytes": cfg.max_output_bytes,
        }
        with open(os.path.join(d, "payload.json"), "w") as f:
            json.dump(payload, f)
        np.savez(os.path.join(d, "masks.npz"), **{f"m{k}": np.asarray(v, dtype=bool) for k, v in scene.masks.items()})
        env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
               "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _RUNNER, d], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=d, env=env, start_new_session=True, close_fds=True,
        )
        out: list[bytes] = []
        err: list[bytes] = []
        overflow = threading.Event()
        err_over = threading.Event()
        threads = [threading.Thread(target=_reader, args=(proc.stdout, cfg.max_output_bytes, out, overflow), daemon=True),
                   threading.Thread(target=_reader, args=(proc.stderr, 64_000, err, err_over), daemon=True)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + cfg.wall_timeout_s
        timed_out = False
        while True:
            try:
                proc.wait(timeout=0.02)
                break
            except subprocess.TimeoutExpired:
                pass
            if overflow.is_set():
                _kill(proc)
                proc.wait()
                break
            if time.monotonic() > deadline:
                timed_out = True
                _kill(proc)
                proc.wait()
                break
        for t in threads:
            t.join(timeout=2)
        for s in (proc.stdout, proc.stderr):
            try:
                s.close()
            except OSError:
                pass
    duration = time.perf_counter() - t0
    stderr = b"".join(err).decode("utf-8", "replace")[-2000:]
    limits = cfg.model_dump()
    if overflow.is_set():
        raise SandboxError(f"output exceeds the limit of {cfg.max_output_bytes} bytes; the process was killed")
    if timed_out:
        raise SandboxError(f"wall-clock timeout: the code ran longer than {cfg.wall_timeout_s} s and was killed")
    rc = proc.returncode
    if rc is not None and rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU or sig == signal.SIGKILL and duration >= cfg.cpu_seconds:
            raise SandboxError(f"CPU time limit of {cfg.cpu_seconds} s exceeded; the process was killed")
        if sig == signal.SIGXFSZ:
            raise SandboxError("file size limit: the code tried to write a file")
        raise SandboxError(f"the sandbox process died from signal {signal.Signals(sig).name}")
    raw = b"".join(out)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        raise SandboxError(
            f"the sandbox gave no valid JSON output (exit status {rc}){': ' + tail[0] if tail else ''}"
        ) from None
    if not isinstance(doc, dict) or not doc.get("ok"):
        raise SandboxError(f"the code failed: {doc.get('error') if isinstance(doc, dict) else 'bad output'}")
    attrs = validate_result(doc.get("result"), scene)
    return SandboxResult(attributes=attrs, duration_s=duration, stderr=stderr, output_bytes=len(raw), limits=limits)


def _json_value(v: Any, depth: int = 0) -> bool:
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return v == v and v not in (float("inf"), float("-inf"))
    if isinstance(v, list) and depth < 2:
        return len(v) <= 1000 and all(_json_value(x, depth + 1) for x in v)
    return False


def validate_result(result: Any, scene: Scene) -> dict[int, dict[str, Any]]:
    """``result`` must be ``{object_id: {attribute_name: value}}`` over existing ids; raises SandboxError."""
    if not isinstance(result, dict):
        raise SandboxError(f"result must be a dict {{object_id: {{attribute: value}}}}, got {type(result).__name__}")
    out: dict[int, dict[str, Any]] = {}
    for k, v in result.items():
        try:
            oid = int(k)
        except (TypeError, ValueError):
            raise SandboxError(f"result key {k!r} is not an object id") from None
        if oid not in scene.ssr.objects:
            raise SandboxError(f"result names object {oid}, which is not in the SSR (ids: {scene.ssr.ids})")
        if not isinstance(v, dict):
            raise SandboxError(f"result[{oid}] must be a dict of attributes, got {type(v).__name__}")
        if len(v) > MAX_ATTRS_PER_OBJECT:
            raise SandboxError(f"result[{oid}] has more than {MAX_ATTRS_PER_OBJECT} attributes")
        for name, val in v.items():
            if not isinstance(name, str) or not ATTR_NAME.match(name):
                raise SandboxError(f"attribute name {name!r} of object {oid} must match {ATTR_NAME.pattern}")
            if not _json_value(val):
                raise SandboxError(f"attribute {name!r} of object {oid} is not a JSON scalar or a short list")
        out[oid] = dict(v)
    return out
