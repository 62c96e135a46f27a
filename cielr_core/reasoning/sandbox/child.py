"""The program that runs inside the sandbox (passed to ``python -c``; stdlib and numpy only).

Order matters: everything that needs files or privileges happens first, then the doors close,
then the code runs:

1. read the payload (code, SSR view, limits) and the masks from the read-only input folder, import
   numpy, compile the code;
2. drop to an unprivileged uid/gid with no supplementary groups (when started as root);
3. set rlimits (CPU, address space, open files, file size, processes, core dumps);
4. load the seccomp filter the parent compiled (``no_new_privs`` first): no process creation or
   exec, no signals, no sockets, no write-mode opens, truncation, deletion, renames, mounts,
   namespaces, ptrace, keyrings, bpf ...;
5. install the audit hook (its deny list is a constant of its own code: nothing the sandboxed code
   can reach holds it) and hand the code read-only namespaces that hold only the allowed numpy /
   math API, plus a small set of builtins;
6. run the code as a function (no ``exec`` event needed) and print one JSON document.
"""

import ctypes
import json
import math
import os
import resource
import sys
import types


def _emit(obj, cap):
    def conv(o):
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            if o.size > 100000:
                raise ValueError(f"array of {o.size} elements in the result")
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON-serialisable")

    try:
        s = json.dumps(obj, allow_nan=False, default=conv)
    except (TypeError, ValueError, OverflowError) as e:
        s = json.dumps({"ok": False, "error": f"result is not JSON-serialisable: {str(e)[:300]}"})
    except RecursionError:
        s = json.dumps({"ok": False, "error": "RecursionError: the result is nested too deeply"})
    except MemoryError:
        s = '{"ok": false, "error": "MemoryError: memory limit exceeded while serialising the result"}'
    if len(s) > cap:
        s = json.dumps({"ok": False, "error": f"output of {len(s)} bytes exceeds the limit of {cap} bytes"})
    data = s.encode("utf-8", "replace")
    while data:
        n = os.write(1, data)
        data = data[n:]


def _load_seccomp(bpf):
    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                    ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    n = len(bpf) // 8
    prog_filter = (SockFilter * n).from_buffer_copy(bpf)
    prog = SockFprog(n, prog_filter)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    return libc.prctl(21, 0, 0, 0, 0)  # PR_GET_SECCOMP: 2 = filter mode


def _namespace(title, source, names, members=None):
    """A read-only object holding exactly ``names`` of ``source`` (staticmethod: nothing binds)."""

    def missing(self, name):
        raise AttributeError(f"sandbox: {title}.{name} is not in the allowed API (denied)")

    def read_only(self, *a):
        raise AttributeError(f"sandbox: {title} is read-only (denied)")

    body = {n: staticmethod(getattr(source, n)) for n in names if hasattr(source, n)}
    body.update({n: staticmethod(v) for n, v in (members or {}).items()})
    body.update({"__slots__": (), "__getattr__": missing, "__setattr__": read_only, "__delattr__": read_only,
                 "__repr__": lambda self: f"<sandbox {title}>"})
    return type(title, (), body)()


def _audit(event, args):
    # The deny list is a literal in this function's code: the sandboxed code cannot reach or change it.
    if event in ("exec", "compile", "import", "open", "sys.addaudithook", "ctypes.dlopen", "ctypes.dlsym",
                 "function.__new__", "code.__new__", "sys._getframe", "sys._current_frames", "sys.settrace",
                 "sys.setprofile", "object.__setattr__", "object.__delattr__", "object.__getattr__"):
        raise PermissionError(f"sandbox: {event} denied")
    if event.startswith(("os.", "socket.", "subprocess.", "ctypes.", "shutil.", "pty.", "mmap.", "fcntl.",
                         "resource.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "glob.",
                         "tempfile.", "sqlite3.", "marshal.", "pickle.", "code.", "cpython.", "gc.", "signal.",
                         "syslog.", "_posixsubprocess", "winreg.", "sys.")):
        raise PermissionError(f"sandbox: {event} denied")


def _probe():
    """What a test of the OS layer needs to see from inside: the uid, the seccomp mode, and that
    process creation, sockets, writes and signals are refused."""
    import socket

    out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "env": sorted(os.environ)}
    for what, fn in (("socket", lambda: socket.socket()), ("fork", os.fork),
                     ("write", lambda: open("/tmp/probe", "w").close()), ("kill", lambda: os.kill(1, 0)),
                     ("exec", lambda: os.execv("/python/bin/python3", ["x"]))):
        try:
            r = fn()
            out[what] = "allowed"
            if what == "fork" and r == 0:
                os._exit(0)
        except OSError as e:
            out[what] = f"denied: {e.strerror}"
    return out


def main():
    d = sys.argv[1]
    with open(d + "/payload.json", "r") as f:
        P = json.load(f)
    cap = int(P["max_output_bytes"])
    if P.get("site"):
        sys.path.insert(0, P["site"])
    import numpy as np
    import numpy.linalg

    with np.load(d + "/masks.npz", allow_pickle=False) as z:
        masks = {int(k[1:]): np.array(z[k], dtype=bool) for k in z.files}
    bpf = None
    if P.get("seccomp"):
        with open(d + "/filter.bpf", "rb") as f:
            bpf = f.read()
    probe = bool(P.get("probe"))
    if probe:
        import socket  # noqa: F401 - the probe tries it after the doors close
    try:
        code = None if probe else compile(P["code"], "<llm-code>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        _emit({"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}, cap)
        return

    if os.geteuid() == 0:  # 2. an unprivileged uid, no groups
        os.setgroups([])
        os.setgid(int(P["gid"]))
        os.setuid(int(P["uid"]))
    mem = int(P["memory_mb"]) * 1024 * 1024  # 3. rlimits
    cpu = int(P["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(P["max_open_files"]), int(P["max_open_files"])))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    mode = _load_seccomp(bpf) if bpf is not None else 0  # 4. seccomp
    if bpf is not None and mode != 2:
        _emit({"ok": False, "error": f"seccomp filter did not load (mode {mode})"}, cap)
        return
    if probe:
        out = _probe()
        out["seccomp_mode"] = mode
        _emit({"ok": True, "probe": out}, cap)
        return

    safe = P["builtins"]  # 5. the code's world
    real_builtins = __builtins__ if isinstance(__builtins__, dict) else vars(__builtins__)
    linalg = _namespace("numpy.linalg", np.linalg, P["linalg_api"])
    np_ns = _namespace("numpy", np, [n for n in P["numpy_api"] if n != "linalg"], {"linalg": linalg})
    math_ns = _namespace("math", math, P["math_api"])
    mods = {"numpy": np_ns, "math": math_ns}
    real_import = real_builtins["__import__"]
    loaded = frozenset(n for n in sys.modules if n.startswith("numpy."))

    def imp(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name in mods:
            return mods[name]
        # numpy's C code imports its own helpers lazily through the caller's builtins (ndarray.sum ->
        # numpy._core._methods). Such a module must already be in memory (nothing new is read), and the
        # code cannot ask for one itself: the static check allows only `numpy` and `math`.
        if level == 0 and name.startswith("numpy.") and name in loaded:
            return real_import(name, globals, locals, fromlist, level)
        raise ImportError(f"sandbox: import of {name!r} denied")

    builtins = {k: real_builtins[k] for k in safe if k in real_builtins}
    builtins["__import__"] = imp
    g = {"__builtins__": builtins, "__name__": "sandbox", "np": np_ns, "math": math_ns, "ssr": P["ssr"],
         "masks": masks, "result": {}}
    if P.get("python_layers", True):
        fn = types.FunctionType(code, g)
        sys.addaudithook(_audit)
    else:  # tests only: the OS layer on its own, with the full builtins and no hook
        g["__builtins__"] = real_builtins
        g["np"], g["math"] = np, math
        fn = types.FunctionType(code, g)
    mem_mb = int(P["memory_mb"])
    del P, bpf
    try:  # 6. run
        fn()
        _emit({"ok": True, "result": g.get("result")}, cap)
    except MemoryError:
        g = None
        _emit({"ok": False, "error": f"MemoryError: the memory limit of {mem_mb} MB was exceeded"}, cap)
    except RecursionError:
        _emit({"ok": False, "error": "RecursionError: maximum recursion depth exceeded"}, cap)
    except BaseException as e:  # noqa: BLE001 - every failure of the code becomes one message
        try:
            msg = str(e)
        except BaseException:  # noqa: BLE001
            msg = "(unprintable)"
        if len(msg) > 500:
            msg = msg[:500] + "..."
        _emit({"ok": False, "error": f"{type(e).__name__}: {msg}"}, cap)


if __name__ == "__main__":
    main()
