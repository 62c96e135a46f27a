"""Reading untrusted local files: regular files only, size-bounded.

A manifest names files that other people control. Opening a FIFO blocks until a writer appears (a
run hangs for ever), a device such as ``/dev/zero`` never ends, and a huge file fills memory. So
:func:`read_regular_file`:

* ``os.stat`` the path first (symlinks followed) and refuses anything that is not a regular file
  (FIFO, socket, character or block device, directory) without opening it;
* opens with ``O_NONBLOCK`` (opening a FIFO swapped in after the check does not block) and checks
  the opened descriptor again with ``fstat`` (same file, still regular);
* refuses a file above ``max_bytes`` before reading, and reads at most ``max_bytes + 1`` bytes.

A regular local file cannot block a read indefinitely, so the read is bounded in time by its size.
Errors are :class:`UnreadableFileError` (a ``ValueError``; never transient) naming the path and why.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnreadableFileError(ValueError):
    """A local input file cannot be read; the message names the file and why."""

    transient = False


def file_kind(mode: int) -> str:
    """In words, what an ``st_mode`` is (for messages)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: str | os.PathLike, *, max_bytes: int,
                      limit_name: str = "limits.max_image_bytes") -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``); see the module docstring."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError as e:
        raise UnreadableFileError(f"{p}: no such file") from e
    except PermissionError as e:
        raise UnreadableFileError(f"{p}: permission denied") from e
    except OSError as e:
        raise UnreadableFileError(f"{p}: cannot be read: {e.strerror or e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableFileError(f"{p}: is {file_kind(st.st_mode)}, not a regular file; only regular files are read")
    if st.st_size > max_bytes:
        raise UnreadableFileError(f"{p}: {st.st_size} bytes, above the {max_bytes}-byte limit ({limit_name})")
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except PermissionError as e:
        raise UnreadableFileError(f"{p}: permission denied") from e
    except OSError as e:
        raise UnreadableFileError(f"{p}: cannot be opened: {e.strerror or e}") from e
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise UnreadableFileError(f"{p}: changed while being opened (now {file_kind(fst.st_mode)}); not read")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise UnreadableFileError(f"{p}: read failed: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if total > max_bytes:
        raise UnreadableFileError(f"{p}: grew above the {max_bytes}-byte limit ({limit_name}) while read")
    return b"".join(chunks)


def check_regular_file(path: str | Path) -> None:
    """Raise :class:`UnreadableFileError` unless ``path`` is (a symlink to) an existing regular file."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError as e:
        raise UnreadableFileError(f"{p}: no such file") from e
    except OSError as e:
        raise UnreadableFileError(f"{p}: cannot be read: {e.strerror or e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableFileError(f"{p}: is {file_kind(st.st_mode)}, not a regular file; only regular files are read")


__all__ = ["UnreadableFileError", "check_regular_file", "file_kind", "read_regular_file"]
