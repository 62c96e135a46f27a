"""A corpus of attempts to escape the spatial-code sandbox, as an attacker who controls the LLM's
answer would write them. Each attempt goes through the real entry point (`run_code`): it must be
denied with a reason, leave no marker file, leave the decoy result intact, leak no planted secret
and leave no process behind, and the parent must answer within the wall-clock bound.

`test_os_layer_alone_*` run the dangerous ones again with every Python layer switched off (full
builtins, real modules, no audit hook, no static check): the OS layer (namespaces, uid 65534,
seccomp, rlimits) must hold on its own.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from cielr_core.reasoning import sandbox as SB
from cielr_core.reasoning.sandbox.output import decode_output
from security.common import LIMITS, MARKER, make_scene, no_secret_in

pytestmark = pytest.mark.skipif(not SB.sandbox_status(LIMITS).ok,
                                reason="the sandbox's OS layer is not available on this machine")

M = MARKER
# (class, code, expected reason pattern)
CORPUS: list[tuple[str, str, str]] = [
    # --- module re-exports through numpy
    ("reexport", "x = np.core.multiarray", "attribute 'core'"),
    ("reexport", f"np.os.system('touch {M}')", "attribute 'os'"),
    ("reexport", "m = np.sys.modules", "attribute 'sys'"),
    ("reexport", f"np.lib.format.os.system('touch {M}')", "attribute 'lib'"),
    ("reexport", "L = np.linalg.linalg", "numpy.linalg.linalg is not in the allowed API"),
    ("reexport", "x = np.ctypeslib", "attribute 'ctypeslib'"),
    ("reexport", "from numpy import testing", "not in the allowed API"),
    ("reexport", "import numpy.core", "import of 'numpy.core'"),
    ("reexport", "g = np.mean.__globals__", "underscore"),
    ("reexport", "r = np.random.default_rng(0)", "attribute 'random'"),
    ("reexport", "f = math.sqrt\nx = f.__self__", "underscore"),
    # --- interpreter introspection
    ("introspection", "x = ().__class__.__bases__[0].__subclasses__()", "underscore"),
    ("introspection", "g = (i for i in [1])\nf = g.gi_frame.f_back.f_globals", "attribute 'gi_frame'"),
    ("introspection", "try:\n    1 / 0\nexcept Exception as e:\n    t = e.__traceback__", "underscore"),
    ("introspection", "try:\n    1 / 0\nexcept Exception as e:\n    t = e.with_traceback(None)",
     "attribute 'with_traceback'"),
    ("introspection", "t = type(1)", "use of 'type'"),
    ("introspection", "o = getattr(np, 'os')", "use of 'getattr'"),
    ("introspection", "v = vars(np)", "use of 'vars'"),
    ("introspection", "m = str.mro()", "attribute 'mro'"),
    ("introspection", "import inspect", "import of 'inspect'"),
    ("introspection", "f = lambda: 0\nc = f.func_code", "attribute 'func_code'"),
    # --- format-string lookups
    ("format", "s = '{0.__class__}'.format(1)", "'__'"),
    ("format", "s = ('{0._' + '_class_' + '_}').format(np)", "attribute 'format'"),
    ("format", "s = '{a.real}'.format_map({'a': 1})", "attribute 'format_map'"),
    ("format", "f = str.format\ns = f('{0.real}', 1)", "attribute 'format'"),
    # --- hook tampering
    ("hook", "import sys\nsys.modules['__main__'].state = None", "import of 'sys'"),
    ("hook", "import builtins", "import of 'builtins'"),
    ("hook", "h = np.sys.addaudithook", "attribute 'sys'"),
    # --- environment and /proc
    ("env", "import os\nresult = {0: {'k': os.environ.get('CIELR_LLM__API_KEY', '')}}", "import of 'os'"),
    ("env", "result = {0: {'k': open('/proc/self/environ').read()}}", "use of 'open'"),
    ("env", "x = np.loadtxt('/proc/1/environ')", "attribute 'loadtxt'"),
    ("env", "x = np.fromfile('/proc/self/environ', dtype=np.uint8)", "attribute 'fromfile'"),
    ("env", "x = np.genfromtxt('/root/.aws/credentials')", "attribute 'genfromtxt'"),
    # --- files outside: create, truncate, delete
    ("files", f"np.save('{M}', np.zeros(3))", "attribute 'save'"),
    ("files", f"np.zeros(3).tofile('{M}')", "attribute 'tofile'"),
    ("files", "import shutil\nshutil.rmtree('/work')", "import of 'shutil'"),
    ("files", "import pathlib", "import of 'pathlib'"),
    ("files", f"import io\nio.open('{M}', 'w')", "import of 'io'"),
    # --- fork / exec / orphans / signals
    ("process", "import subprocess\nsubprocess.run(['sh'])", "import of 'subprocess'"),
    ("process", f"import os\nos.system('touch {M}')", "import of 'os'"),
    ("process", "import multiprocessing", "import of 'multiprocessing'"),
    ("process", "import signal", "import of 'signal'"),
    ("process", "from os import fork", "import from 'os'"),
    # --- sockets
    ("socket", "import socket", "import of 'socket'"),
    ("socket", "import urllib.request", "import of 'urllib.request'"),
    # --- bombs: memory, CPU, output, recursion
    ("bomb", "a = np.ones((60000, 60000))", "MemoryError"),
    ("bomb", "a = [0] * (10 ** 10)", "MemoryError"),
    ("bomb", "while True:\n    pass", "CPU time limit"),
    ("bomb", "x = 2 ** (10 ** 10)", "CPU time limit|MemoryError"),
    ("bomb", "result = {0: {'s': 'x' * 10 ** 7}}", "exceeds the limit of 50000 bytes"),
    ("bomb", "def f(n):\n    return f(n + 1)\nf(0)", "RecursionError"),
    ("bomb", "x = []\nfor i in range(100000):\n    x = [x]\nresult = {0: {'a': x}}", "RecursionError|nested"),
    # --- parser and decoder bombs
    ("parser", "x = " + "(" * 5000 + "1" + ")" * 5000, "brackets nested deeper"),
    ("parser", "x = " + "-" * 15000 + "1", "unary operators in a row"),
    ("parser", "x = " + "not " * 3000 + "1", "unary operators in a row"),
    ("parser", "x = " + "1 + " * 3000 + "1", "nested"),
    ("parser", "x = 1\n" * 1000, "more than 400 lines"),
    ("parser", "x = '" + "a" * 30000 + "'", "longer than 20000 characters"),
    ("parser", "".join("    " * i + "if 1:\n" for i in range(90)) + "    " * 90 + "pass", "nested"),
    ("parser", "x = " + "[" * 40 + "]" * 40, "brackets nested deeper"),
    ("parser", "x = a" + ".real" * 3000, "nested|syntax nodes"),
    # --- control characters in results
    ("control", "result = {0: {'label': '\\x1b]0;pwned\\x07'}}", "control or format character U\\+001B"),
    ("control", "result = {0: {'note': 'ok\\u202egnp.exe'}}", "control or format character U\\+202E"),
    ("control", "result = {0: {'note': 'x' * 300}}", "longer than 256"),
    ("control", "result = {0: {'a': [[[1]]]}}", "not a JSON scalar"),
    ("control", "result = {0: {'\\x1b[2J': 1}}", "must match"),
]


def test_the_corpus_is_large_and_covers_every_class():
    classes = {c for c, _, _ in CORPUS}
    assert len(CORPUS) >= 40
    assert classes == {"reexport", "introspection", "format", "hook", "env", "files", "process", "socket", "bomb",
                       "parser", "control"}


@pytest.mark.parametrize("cls, code, why", CORPUS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CORPUS)])
def test_attempt_is_denied_with_its_reason(cls, code, why, planted):
    import re

    t0 = time.monotonic()
    with pytest.raises(SB.SandboxError) as ei:
        SB.run_code(code, make_scene(), LIMITS)
    elapsed = time.monotonic() - t0
    reason = ei.value.reason
    assert re.search(why, reason), reason
    assert elapsed < LIMITS.wall_timeout_s + 5, f"the parent waited {elapsed:.1f} s"
    no_secret_in(reason, repr(ei.value))
    assert all(ord(c) >= 32 or c == "\n" for c in reason), "control characters in the reason"


def test_error_messages_from_the_child_are_cleaned(planted):
    with pytest.raises(SB.SandboxError) as ei:
        SB.run_code("raise ValueError('\\x1b[2J\\x1b]0;owned\\x07 boom')", make_scene(), LIMITS)
    assert "boom" in ei.value.reason and "\x1b" not in ei.value.reason and "\x07" not in ei.value.reason


# --- the child's Python layers on their own (the static check bypassed) --------------------------
CHILD = [
    # the numpy namespace holds only the allowed API
    ("x = np.core", "numpy.core is not in the allowed API"),
    ("x = np.linalg.linalg", "numpy.linalg.linalg is not in the allowed API"),
    ("np.mean = None", "read-only"),
    # module objects reached through interpreter internals meet the audit hook
    (("for c in ().__class__.__base__.__subclasses__():\n"
      "    if c.__name__ == '_wrap_close':\n"
      f"        c.__init__.__globals__['system']('touch {M}')\n"), "os.system denied"),
    (("for c in ().__class__.__base__.__subclasses__():\n"
      "    if c.__name__ == '_wrap_close':\n"
      "        sysm = c.__init__.__globals__['sys']\n"
      "        sysm.modules['__main__']._audit.__code__ = (lambda e, a: None).__code__\n"), "denied"),
    (("for c in ().__class__.__base__.__subclasses__():\n"
      "    if c.__name__ == '_wrap_close':\n"
      "        c.__init__.__globals__['sys'].settrace(lambda *a: None)\n"), "sys.settrace denied"),
    ("import os", "ImportError"),
    (f"x = open('{M}', 'w')", "NameError"),
]


@pytest.mark.parametrize("code, why", CHILD)
def test_child_python_layers_hold_without_the_static_check(code, why, planted):
    import re

    with pytest.raises(SB.SandboxError) as ei:
        SB._spawn(code, make_scene(), LIMITS)
    assert re.search(why, ei.value.reason), ei.value.reason


# --- the OS layer on its own: full builtins, real modules, no hook, no static check ----------------
def _os_only(code: str):
    """Run with every Python layer off; return the result attributes or the SandboxError reason."""
    try:
        return SB._spawn(code, make_scene(), LIMITS, python_layers=False).attributes
    except SB.SandboxError as e:
        return e.reason


OS_ONLY = [
    # (what, code assigning result[0]['r'] to what happened)
    ("environment", "import os\nresult = {0: {'r': ' '.join(sorted(os.environ))}}"),
    ("proc of the parent", "import os\nresult = {0: {'r': str(os.path.exists('/proc'))}}"),
    ("files of the parent", "import os\nresult = {0: {'r': ' '.join(sorted(os.listdir('/')))}}"),
    ("create outside", f"import os\ntry:\n    open('{M}', 'w').write('x')\n    r = 'created'\n"
                       "except OSError as e:\n    r = e.strerror\nresult = {0: {'r': r}}"),
    ("create in tmp", "try:\n    open('/tmp/x', 'w')\n    r = 'created'\nexcept OSError as e:\n    r = e.strerror\n"
                      "result = {0: {'r': r}}"),
    ("truncate", "import os\ntry:\n    os.truncate('/in/payload.json', 0)\n    r = 'truncated'\n"
                 "except OSError as e:\n    r = e.strerror\nresult = {0: {'r': r}}"),
    ("delete", "import os\ntry:\n    os.unlink('/in/payload.json')\n    r = 'deleted'\n"
               "except OSError as e:\n    r = e.strerror\nresult = {0: {'r': r}}"),
    ("fork", "import os\ntry:\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n    r = 'forked'\n"
             "except OSError as e:\n    r = e.strerror\nresult = {0: {'r': r}}"),
    ("shell", f"import os\nrc = os.system('touch {M}')\nresult = {{0: {{'r': str(rc)}}}}"),
    ("exec", "import os\ntry:\n    os.execv('/usr/bin/true', ['true'])\nexcept OSError as e:\n    r = e.strerror\n"
             "result = {0: {'r': r}}"),
    ("setsid and fork", "import os\ntry:\n    os.setsid()\nexcept OSError:\n    pass\ntry:\n    os.fork()\n"
                        "    r = 'forked'\nexcept OSError as e:\n    r = e.strerror\nresult = {0: {'r': r}}"),
    ("clone through ctypes", "import ctypes\nlibc = ctypes.CDLL(None)\nr = libc.syscall(56, 17, 0, 0, 0, 0)\n"
                             "result = {0: {'r': str(r)}}"),
    ("signal the parent", "import os\ntry:\n    os.kill(os.getppid(), 9)\n    r = 'sent'\n"
                          "except OSError as e:\n    r = e.strerror\nresult = {0: {'r': r}}"),
    ("signal everyone", "import os\ntry:\n    os.kill(-1, 9)\n    r = 'sent'\nexcept OSError as e:\n    r = e.strerror\n"
                        "result = {0: {'r': r}}"),
    ("become root", "import os\ntry:\n    os.setuid(0)\n    r = 'root'\nexcept OSError as e:\n    r = e.strerror\n"
                    "result = {0: {'r': r}}"),
    ("new user namespace", "import ctypes\nr = ctypes.CDLL(None).unshare(0x10000000)\nresult = {0: {'r': str(r)}}"),
]


def test_os_layer_alone_hides_the_parent_and_denies_every_action(planted):
    got = {what: _os_only(code) for what, code in OS_ONLY}
    r = {what: (v[0]["r"] if isinstance(v, dict) else v) for what, v in got.items()}
    no_secret_in(got)
    assert r["environment"] == "LANG MKL_NUM_THREADS OMP_NUM_THREADS OPENBLAS_NUM_THREADS PWD"
    assert r["proc of the parent"] == "False"
    assert set(r["files of the parent"].split()) <= {"usr", "lib", "lib64", "lib32", "libx32", "bin", "sbin", "etc",
                                                     "python", "site", "in", "dev", "tmp"}
    assert r["create outside"] == "Operation not permitted"  # seccomp refuses write-mode opens
    assert r["create in tmp"] == "Operation not permitted"
    for what in ("truncate", "delete", "fork", "exec", "setsid and fork", "signal the parent", "signal everyone",
                 "become root"):
        assert r[what] == "Operation not permitted", (what, r[what])
    assert r["shell"] != "0"  # os.system could not start a shell
    assert r["clone through ctypes"] == "-1" and r["new user namespace"] == "-1"


def test_os_layer_alone_has_no_network(planted):
    """A server listening on the parent's loopback never sees a connection from the sandbox."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    seen: list = []

    def accept():
        end = time.monotonic() + 8
        while time.monotonic() < end:
            try:
                seen.append(srv.accept())
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    r = _os_only(f"import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                 "    r = 'connected'\nexcept OSError as e:\n    r = str(e.strerror)\nresult = {0: {'r': r}}")
    t.join()
    srv.close()
    assert r[0]["r"] == "Operation not permitted" and seen == []


def test_os_layer_alone_holds_the_pipes_only_until_the_deadline(planted):
    """Code that blocks forever (and would hold the pipes) is killed at the wall clock with its tree."""
    cfg = LIMITS.model_copy(update={"cpu_seconds": 30, "wall_timeout_s": 1.5})
    t0 = time.monotonic()
    with pytest.raises(SB.SandboxError, match="wall-clock timeout"):
        SB._spawn("import time\ntime.sleep(60)", make_scene(), cfg, python_layers=False)
    assert time.monotonic() - t0 < cfg.wall_timeout_s + 4


def test_os_layer_alone_decoder_bomb_is_refused_cleanly(planted):
    """Output crafted to crash the parent's JSON decoder (deep nesting, bad UTF-8) is a SandboxError."""
    for payload in ("b'[' * 20000", "b'{\"ok\": true, \"result\": ' + b'[' * 5000 + b']' * 5000 + b'}'",
                    "b'\\xff\\xfe' * 100"):
        reason = _os_only(f"import os\nos.write(1, {payload})\nos._exit(0)")
        assert isinstance(reason, str) and ("nested deeper" in reason or "no valid JSON" in reason), reason


def test_decoder_bound_in_the_parent():
    with pytest.raises(SB.SandboxError, match="nested deeper"):
        decode_output(b"[" * 100000 + b"]" * 100000, 0)
    with pytest.raises(SB.SandboxError, match="no valid JSON"):
        decode_output(b'{"a": "\\ud800', 0)
