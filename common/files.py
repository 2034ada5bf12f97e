"""The one atomic file write: temp file in the same folder, fsync, ``os.replace``; and the one
way to make many such writes durable at once (`sync_filesystem`).

Readers (and a process restarted after a crash) see the old file or the new one, never a torn
one; a failed write leaves no temp file behind. ``mkstemp`` creates the file with mode 0600;
pass ``mode`` for an ordinary file others may read. ``durable=False`` skips the fsync (a power
cut may then leave the new file empty or short) for files whose readers check their size, or
whose writer makes them durable in a batch with `sync_filesystem` before it promises them to
anyone (the server's region intake, before its ack).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(
    path: Path, *, mode: int | None = None, durable: bool = True
) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` when the block ends without an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, *, mode: int | None = None, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_writer(path, mode=mode, durable=durable) as fh:
        fh.write(data)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` (Linux), or None."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name, use_errno=True).syncfs
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def sync_filesystem(path: Path) -> None:
    """Everything written to the file system holding ``path`` reaches the disk (``syncfs``).

    One call for a batch of ``durable=False`` writes: measured on this project's disk, 4-9 ms
    for 60 region files against 3.6 ms for each file's own fsync. Falls back to ``os.sync``
    (every file system) where ``syncfs`` is missing. OSError when it fails.
    """
    fn = _syncfs()
    if fn is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
