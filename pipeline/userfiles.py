"""Reading a file whose path a user gave (params.yaml, a local dataset source, an image or CSV to
classify): regular files only, opened without blocking and read with a byte bound.

A FIFO, a device (`/dev/zero`), a socket or a folder is refused by what it is, before a read can
hang or run forever; a file under /proc or /sys, which reports a size of 0 and makes its content
on read, is refused as one that is not an ordinary file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import PipelineError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))
PSEUDO_FILESYSTEMS = ("/proc/", "/sys/")


class UserFileError(PipelineError, ValueError):
    """A path a user gave does not name a readable, ordinary file."""


def kind_of(mode: int) -> str | None:
    """What a non-regular file is ("a named pipe (FIFO)", ...); None for a regular file."""
    return next((name for test, name in _KINDS if test(mode)), None if stat.S_ISREG(mode)
                else "not a regular file")


@contextlib.contextmanager
def open_regular(path: Path, what: str = "file") -> Iterator[BinaryIO]:
    """`path` opened for reading in binary, if it is a regular file (links followed); else
    UserFileError saying what it is. Opening never blocks (a FIFO with no writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise UserFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserFileError(f"{path}: is a folder, expected a {what}") from None
    except OSError as error:
        raise UserFileError(f"{path}: cannot be opened ({error.strerror})") from None
    try:
        info = os.fstat(fd)
        kind = kind_of(info.st_mode)
        if kind is not None:
            raise UserFileError(f"{path}: is {kind}, expected a {what}; only regular files are "
                                "read")
        if str(Path(path).resolve()).startswith(PSEUDO_FILESYSTEMS) or info.st_size == 0 \
                and str(Path(path).resolve()).startswith("/dev/"):
            raise UserFileError(f"{path}: a kernel file made on read, not an ordinary {what}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_bounded(path: Path, max_bytes: int, what: str = "file") -> bytes:
    """The whole of a regular file of at most `max_bytes` bytes; UserFileError otherwise (the
    size is checked on the bytes read, not only on what the file system reports)."""
    with open_regular(path, what) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserFileError(f"{path}: more than {max_bytes:,} bytes; a {what} is smaller")
    return data
