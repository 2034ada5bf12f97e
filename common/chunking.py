"""Chunked transfer of one artifact (a model checkpoint) with per-chunk and whole SHA-256."""

from __future__ import annotations

import math

from common.errors import TransferError
from common.hashing import sha256_bytes

MAX_CHUNK_BYTES = 256 * 1024


def chunk_count(total: int, chunk_size: int) -> int:
    return max(1, math.ceil(total / chunk_size))


def split_chunks(data: bytes, chunk_size: int = MAX_CHUNK_BYTES) -> list[bytes]:
    """Split ``data`` into chunks of ``chunk_size`` (the last one shorter)."""
    if not 0 < chunk_size <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_BYTES}")
    view = memoryview(data)
    return [bytes(view[i : i + chunk_size]) for i in range(0, max(len(data), 1), chunk_size)]


class ChunkBook:
    """Which chunks of one offered payload have arrived, and the checks every chunk passes.

    A chunk is accepted only when its index is in range, its length is the one the offer
    implies, and its SHA-256 matches. Duplicates (QoS1 redelivery, resends) are harmless.
    Subclasses keep the bytes (``_store``): in memory (``ChunkAssembler``) or on disk (the
    robot's ``ChunkFile``).
    """

    def __init__(self, *, total_bytes: int, chunk_size: int, chunks: int, sha256: str) -> None:
        if chunk_count(total_bytes, chunk_size) != chunks:
            raise TransferError(
                f"offer is inconsistent: {total_bytes} bytes in {chunk_size}-byte chunks "
                f"is {chunk_count(total_bytes, chunk_size)} chunks, not {chunks}"
            )
        self.total_bytes = total_bytes
        self.chunk_size = chunk_size
        self.chunks = chunks
        self.sha256 = sha256
        self._have: set[int] = set()

    def expected_length(self, index: int) -> int:
        if index == self.chunks - 1:
            return self.total_bytes - self.chunk_size * (self.chunks - 1)
        return self.chunk_size

    def add(self, index: int, data: bytes, chunk_sha256: str) -> bool:
        """Store one chunk; returns False for a duplicate; TransferError for a bad one."""
        if not 0 <= index < self.chunks:
            raise TransferError(f"chunk index {index} out of range 0..{self.chunks - 1}")
        if len(data) != self.expected_length(index):
            raise TransferError(
                f"chunk {index} has {len(data)} bytes, expected {self.expected_length(index)}"
            )
        if sha256_bytes(data) != chunk_sha256:
            raise TransferError(f"chunk {index} fails its SHA-256 check")
        if index in self._have:
            return False
        self._store(index, data)
        self._have.add(index)
        return True

    def _store(self, index: int, data: bytes) -> None:
        raise NotImplementedError

    @property
    def received(self) -> int:
        return len(self._have)

    @property
    def complete(self) -> bool:
        return len(self._have) == self.chunks

    def missing(self) -> list[int]:
        return [i for i in range(self.chunks) if i not in self._have]

    def _check_complete(self) -> None:
        if not self.complete:
            raise TransferError(f"transfer incomplete: {len(self.missing())} chunks missing")


class ChunkAssembler(ChunkBook):
    """Receives chunks in any order into memory and assembles only a verified whole."""

    def __init__(self, *, total_bytes: int, chunk_size: int, chunks: int, sha256: str) -> None:
        super().__init__(
            total_bytes=total_bytes, chunk_size=chunk_size, chunks=chunks, sha256=sha256
        )
        self._buffer = bytearray(total_bytes)

    def _store(self, index: int, data: bytes) -> None:
        start = index * self.chunk_size
        self._buffer[start : start + len(data)] = data

    def assemble(self) -> bytes:
        """The whole artifact, only once complete and matching the offer's SHA-256."""
        self._check_complete()
        data = bytes(self._buffer)
        if sha256_bytes(data) != self.sha256:
            raise TransferError("assembled artifact fails its SHA-256 check")
        return data
