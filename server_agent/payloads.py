"""What a Transfer Model sends: the whole checkpoint, or a delta from the robot's model.

A delta (``models.delta``) is made against the model the robot runs (its parent for a
fine-tune, or anything else the server holds a checkpoint of: a registered version or the
base checkpoint) when both are stored in the same dtype, and sent when it is smaller than
``MAX_DELTA_SHARE`` of the checkpoint.
Before it is offered the server applies it to the parent itself, exactly as the robot will,
and checks that the result has the new version's weights SHA-256: the robot's rebuild is then
bit-exact, and a delta that would not be is never sent. Deltas are kept for the last few
(version, parent) pairs so a resend or a second robot on the same parent costs nothing.

Methods block (disk, torch, zlib): call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from common.chunking import split_chunks
from common.errors import ArsError, StorageError
from common.hashing import sha256_bytes
from models.checkpoint import read_checkpoint
from models.delta import apply_delta, encode_delta, read_header
from server_agent.store import Store, VersionRow

logger = logging.getLogger(__name__)

#: A delta bigger than this share of the checkpoint is not worth a rebuild on the robot.
MAX_DELTA_SHARE = 0.8
#: (version, parent) deltas kept in memory.
CACHED_DELTAS = 4


@dataclass(frozen=True)
class Payload:
    """The bytes of one offer, split, with each chunk's SHA-256 computed once."""

    data: bytes
    chunks: list[bytes]
    chunk_sha256: list[str]
    sha256: str
    full_bytes: int
    parent_version: str | None = None
    parent_sha256: str | None = None
    weights_sha256: str | None = None

    @property
    def is_delta(self) -> bool:
        return self.parent_version is not None


def _split(data: bytes, chunk_size: int) -> tuple[list[bytes], list[str]]:
    chunks = split_chunks(data, chunk_size)
    return chunks, [sha256_bytes(c) for c in chunks]


class PayloadMaker:
    """Reads checkpoints from the store (or the base checkpoint) and makes deltas."""

    def __init__(self, store: Store, base_checkpoint: Path | None, *, deltas: bool) -> None:
        self.store = store
        self.base_checkpoint = base_checkpoint
        self.deltas = deltas
        self._cache: OrderedDict[tuple[str, str], bytes | None] = OrderedDict()
        self._lock = threading.Lock()

    def full(self, row: VersionRow, chunk_size: int) -> Payload:
        """The checkpoint, checked against its registered SHA-256."""
        data = self.store.model_path(row.version).read_bytes()
        if sha256_bytes(data) != row.sha256:
            raise StorageError(f"checkpoint of {row.version} does not match its SHA-256")
        chunks, shas = _split(data, chunk_size)
        return Payload(data, chunks, shas, row.sha256, len(data))

    def best(self, row: VersionRow, parent: str | None, chunk_size: int) -> Payload:
        """A delta from ``parent`` when one can be made and is worth it, else the checkpoint."""
        if self.deltas and parent is not None and parent != row.version:
            try:
                delta = self.delta(row, parent, chunk_size)
            except (ArsError, OSError) as exc:
                logger.warning("no delta of %s from %s: %s", row.version, parent, exc)
                delta = None
            if delta is not None:
                return delta
        return self.full(row, chunk_size)

    def _parent_path(self, version: str) -> Path | None:
        path = self.store.model_path(version)
        if self.store.version(version) is not None and path.exists():
            return path
        return self.base_checkpoint

    def delta(self, row: VersionRow, parent: str, chunk_size: int) -> Payload | None:
        """The delta of ``row`` from ``parent``, verified by applying it; None when the server
        has no checkpoint of ``parent`` or the delta is not worth sending."""
        key = (row.version, parent)
        with self._lock:
            cached = self._cache.get(key, b"")
        made = cached if cached != b"" else self._make(row, parent)
        with self._lock:
            self._cache[key] = made
            self._cache.move_to_end(key)
            while len(self._cache) > CACHED_DELTAS:
                self._cache.popitem(last=False)
        if made is None:
            return None
        header, _ = read_header(made)
        chunks, shas = _split(made, chunk_size)
        return Payload(
            made, chunks, shas, sha256_bytes(made), row.bytes,
            parent_version=header.parent_version, parent_sha256=header.parent_sha256,
            weights_sha256=header.weights_sha256,
        )  # fmt: skip

    def _make(self, row: VersionRow, parent: str) -> bytes | None:
        path = self._parent_path(parent)
        if path is None:
            return None
        parent_weights, parent_meta = read_checkpoint(path, expected_classes=None)
        if parent_meta.version != parent:
            return None  # the base checkpoint is another model: the robot runs one we lack
        child_path = self.store.model_path(row.version)
        if sha256_bytes(child_path.read_bytes()) != row.sha256:
            raise StorageError(f"checkpoint of {row.version} does not match its SHA-256")
        weights, meta = read_checkpoint(child_path, expected_classes=None)
        if meta.dtype != parent_meta.dtype:  # bit differences need one dtype on both sides
            logger.info(
                "%s is %s, its parent %s %s: sending the checkpoint",
                row.version, meta.dtype, parent, parent_meta.dtype,
            )  # fmt: skip
            return None
        data = encode_delta(parent_weights, parent_meta, weights, meta)
        if len(data) > MAX_DELTA_SHARE * row.bytes:
            logger.info(
                "delta of %s from %s is %d bytes of %d: sending the checkpoint",
                row.version, parent, len(data), row.bytes,
            )  # fmt: skip
            return None
        # rebuilt as the robot will: DeltaError unless it is bit-exact (the weights' SHA-256)
        apply_delta(parent_weights, parent_meta, data)
        logger.info(
            "delta of %s from %s: %d bytes of %d (%.3f)",
            row.version, parent, len(data), row.bytes, len(data) / row.bytes,
        )  # fmt: skip
        return data
