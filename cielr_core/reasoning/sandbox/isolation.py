"""The OS layer: the boundary that holds when every Python-level check has been beaten.

The child runs under ``bwrap`` (bubblewrap) in new pid / net / ipc / uts (/ cgroup) namespaces with a
mount namespace that shows only what it needs, read-only: ``/usr`` and the library folders, the
Python installation (at ``/python``), numpy alone (at ``/site``), the input folder (at ``/in``), a
private ``/tmp`` tmpfs and a minimal ``/dev``. There is no ``/proc``, no home, no project, no store,
no model cache, no environment (``--clearenv``), no network but its own loopback, and no way back
to the parent's processes. ``--die-with-parent`` and the pid namespace end every process of it with
the call. Inside, the child drops to uid/gid 65534 before the code runs, and loads a seccomp filter
compiled here with libseccomp (:func:`seccomp_filter`).

``isolation_status`` probes this once per process and caches the answer; where the OS layer cannot
be had, spatial code is off unless ``reasoning.sandbox.isolation`` is ``python-only``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534

#: syscalls refused with EPERM whatever their arguments
DENIED_SYSCALLS = (
    # process creation and replacement (threads are allowed by the clone rule below)
    "fork", "vfork", "execve", "execveat",
    # other processes: signals, tracing, their memory, pidfds
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "ptrace", "process_vm_readv",
    "process_vm_writev", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "process_madvise",
    # network
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # files: create, truncate, delete, rename, link, permissions, times, xattrs
    "creat", "truncate", "ftruncate", "fallocate", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "rmdir", "link", "linkat", "symlink", "symlinkat", "mknod", "mknodat", "chmod", "fchmod",
    "fchmodat", "chown", "fchown", "lchown", "fchownat", "utime", "utimes", "utimensat", "futimesat",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "memfd_create",
    "name_to_handle_at", "open_by_handle_at",
    # mounts, namespaces, identity, privileges
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "unshare", "setns", "setuid", "setgid", "setreuid", "setregid", "setresuid",
    "setresgid", "setgroups", "setfsuid", "setfsgid", "capset", "personality", "sethostname", "setdomainname",
    # kernel facilities an untrusted computation has no use for
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "acct", "quotactl", "syslog", "ioperm", "iopl", "swapon", "swapoff",
    "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
)
#: refused with ENOSYS, so that the C library falls back to a variant the filter can inspect
NOSYS_SYSCALLS = ("clone3", "openat2")

_O_WRITE_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)
_CLONE_THREAD = 0x00010000
_TIOCSTI = 0x5412

_lock = threading.Lock()
_bpf_cache: dict[str, bytes] = {}
_status_cache: dict[tuple, IsolationStatus] = {}


class IsolationUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class IsolationStatus:
    ok: bool
    mode: str  # "os" | "python-only" | "off"
    detail: str


def seccomp_filter() -> bytes:
    """The compiled BPF program (libseccomp through pyseccomp), cached per process."""
    with _lock:
        if "bpf" in _bpf_cache:
            return _bpf_cache["bpf"]
        try:
            import pyseccomp as sc
        except (ImportError, OSError, AttributeError, TypeError) as e:  # no libseccomp.so.2 on this machine
            raise IsolationUnavailable(f"libseccomp is not available ({type(e).__name__}: {e})") from None
        f = sc.SyscallFilter(sc.ALLOW)
        eperm, enosys = sc.ERRNO(errno.EPERM), sc.ERRNO(errno.ENOSYS)
        for name in DENIED_SYSCALLS:
            _add(sc, f, eperm, name)
        for name in NOSYS_SYSCALLS:
            _add(sc, f, enosys, name)
        _add(sc, f, eperm, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))  # a new process, not a thread
        for flag in _O_WRITE_FLAGS:  # opens for writing, creating, truncating or appending
            _add(sc, f, eperm, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
            _add(sc, f, eperm, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
        _add(sc, f, eperm, "ioctl", sc.Arg(1, sc.EQ, _TIOCSTI))  # typing into a terminal
        with tempfile.TemporaryFile() as tmp:
            f.export_bpf(tmp)
            tmp.seek(0)
            bpf = tmp.read()
        _bpf_cache["bpf"] = bpf
        return bpf


def _add(sc, f, action: int, name: str, *args) -> None:
    try:
        nr = sc.resolve_syscall(sc.system_arch(), name)
    except OSError:
        nr = -1
    if nr < 0:  # not a syscall on this architecture (e.g. `open` on aarch64): nothing to deny
        return
    f.add_rule(action, name, *args)


def _numpy_dirs() -> list[tuple[str, str]]:
    import numpy

    pkg = Path(numpy.__file__).resolve().parent
    binds = [(str(pkg), "/site/numpy")]
    libs = pkg.parent / "numpy.libs"
    if libs.is_dir():  # the wheel's own OpenBLAS / gfortran
        binds.append((str(libs), "/site/numpy.libs"))
    return binds


def python_in_sandbox() -> tuple[str, str]:
    """(the base interpreter's installation prefix, its executable's path inside the sandbox)."""
    exe = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    prefix = Path(sys.base_prefix).resolve()
    try:
        rel = exe.relative_to(prefix)
    except ValueError:
        rel = Path("bin") / exe.name
    return str(prefix), "/python/" + rel.as_posix()


def find_bwrap(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/bin/bwrap") if os.access(p, os.X_OK)),
                                         None)


def bwrap_argv(bwrap: str, input_dir: str, runner: str) -> list[str]:
    prefix, exe = python_in_sandbox()
    argv = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "OPENBLAS_NUM_THREADS", "1",
            "--setenv", "OMP_NUM_THREADS", "1", "--setenv", "MKL_NUM_THREADS", "1"]
    for top in ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache", "--ro-bind", prefix, "/python",
             "--perms", "0755", "--dir", "/site"]
    for src, dst in _numpy_dirs():
        argv += ["--ro-bind", src, dst]
    argv += ["--ro-bind", input_dir, "/in", "--dev", "/dev", "--perms", "1777", "--size", str(16 << 20),
             "--tmpfs", "/tmp", "--chdir", "/tmp"]
    if os.geteuid() == 0:  # keep only what the child needs to drop to uid 65534 itself
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:  # an unprivileged user: a user namespace, uid 65534 inside, no nested user namespaces
        argv += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--disable-userns"]
    return argv + ["--", exe, "-I", "-S", "-c", runner, "/in", owner_tag()]


def owner_tag() -> str:
    """An inert last argument naming the process that started a sandbox (to find leftovers)."""
    return f"cielr-sandbox-of-{os.getpid()}"


def child_env() -> dict[str, str]:
    """The environment of the process that starts the sandbox: nothing of the parent's."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


def isolation_status(cfg, probe) -> IsolationStatus:
    """Whether the configured isolation can be had here; ``probe(cfg)`` runs the in-sandbox check and
    returns its report (a dict) or raises. Cached per process and configuration."""
    key = (cfg.isolation, cfg.bwrap_path)
    with _lock:
        if key in _status_cache:
            return _status_cache[key]
    status = _probe_status(cfg, probe)
    with _lock:
        _status_cache[key] = status
    return status


def _probe_status(cfg, probe) -> IsolationStatus:
    if cfg.isolation == "off":
        return IsolationStatus(False, "off", "spatial code is off (reasoning.sandbox.isolation = off)")
    why_not = ""
    if sys.platform != "linux":
        why_not = f"OS isolation needs Linux (this is {sys.platform})"
    elif find_bwrap(cfg.bwrap_path) is None:
        why_not = "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    else:
        try:
            seccomp_filter()
            report = probe(cfg)
        except IsolationUnavailable as e:
            why_not = str(e)
        except Exception as e:  # noqa: BLE001 - any failure to start the sandbox means: no OS layer here
            why_not = f"bubblewrap could not start a sandbox here ({_short(e)})"
        else:
            problems = [f"{k} {report.get(k)}" for k in ("socket", "fork", "write", "kill", "exec")
                        if not str(report.get(k, "")).startswith("denied")]
            if report.get("uid") == 0 or report.get("seccomp_mode") != 2:
                problems.append(f"uid {report.get('uid')}, seccomp mode {report.get('seccomp_mode')}")
            if not problems:
                return IsolationStatus(True, "os", f"bubblewrap namespaces, uid {report['uid']}, seccomp filter")
            why_not = "the sandbox started but did not hold: " + "; ".join(problems)
    if cfg.isolation == "python-only":
        return IsolationStatus(True, "python-only",
                               f"python-only isolation (explicitly configured; the OS layer is missing: {why_not})")
    return IsolationStatus(False, "off", f"spatial code is off: the OS isolation layer is missing ({why_not}); "
                                         "install bubblewrap and libseccomp, or set "
                                         "CIELR_REASONING__SANDBOX__ISOLATION=python-only to accept weaker isolation")


def _short(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}"
    if isinstance(e, subprocess.CalledProcessError) and e.stderr:
        s += f": {e.stderr[-300:]!r}"
    return s[:400]


def clear_cache() -> None:
    """Forget probe results (tests that change the isolation setting or PATH)."""
    with _lock:
        _status_cache.clear()
