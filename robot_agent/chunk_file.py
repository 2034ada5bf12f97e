"""A model payload received straight to disk, hashed as it arrives.

Each chunk is checked (index, length, its own SHA-256) and written at its offset in a temp
file beside the robot's models; the whole payload's SHA-256 advances over the longest
received prefix, so when the last chunk lands the file is on disk and its hash is done: the
install starts at once instead of assembling and hashing the whole payload first. Chunks that
arrive ahead of a gap (a resend) wait in memory until the gap is filled. The checks are
``common.chunking.ChunkBook``'s; the payload is never held in memory.

Writes are small (one chunk, to the page cache) and run on the caller's thread; ``finish``
fsyncs and is meant for a worker thread.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from common.chunking import ChunkBook
from common.errors import TransferError
from common.hashing import digests_equal


class ChunkFile(ChunkBook):
    """One payload being received into ``path`` (created here, removed by ``discard``)."""

    def __init__(
        self, path: Path, *, total_bytes: int, chunk_size: int, chunks: int, sha256: str
    ) -> None:
        super().__init__(
            total_bytes=total_bytes, chunk_size=chunk_size, chunks=chunks, sha256=sha256
        )
        self.path = path
        self._ahead: dict[int, bytes] = {}  # received past the hashed prefix
        self._next = 0  # first chunk not yet hashed
        self._digest = hashlib.sha256()
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise TransferError(f"cannot receive into {path}: {exc}") from exc

    def add(self, index: int, data: bytes, chunk_sha256: str) -> bool:
        """Check and write one chunk; False for a duplicate; TransferError for a bad one."""
        if self._fd is None:
            raise TransferError("payload already finished or discarded")
        return super().add(index, data, chunk_sha256)

    def _store(self, index: int, data: bytes) -> None:
        assert self._fd is not None  # add checked it
        try:
            os.pwrite(self._fd, data, index * self.chunk_size)
        except OSError as exc:
            raise TransferError(f"cannot write chunk {index} to {self.path}: {exc}") from exc
        if index == self._next:
            self._digest.update(data)
            self._next += 1
            while self._next in self._ahead:
                self._digest.update(self._ahead.pop(self._next))
                self._next += 1
        else:
            self._ahead[index] = data

    def finish(self) -> Path:
        """The complete payload's file, flushed to disk, once its SHA-256 matches the offer's."""
        self._check_complete()
        if self._fd is None:
            raise TransferError("payload already finished or discarded")
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError as exc:
            raise TransferError(f"cannot flush {self.path}: {exc}") from exc
        finally:
            os.close(fd)
        if not digests_equal(self._digest.hexdigest(), self.sha256):
            raise TransferError("received payload fails its SHA-256 check")
        return self.path

    def discard(self) -> None:
        """Close and remove the file (an abandoned or refused payload)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self.path.unlink(missing_ok=True)
