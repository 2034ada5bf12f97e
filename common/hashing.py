"""SHA-256 helpers: every artifact on the wire and on disk carries one."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

_BLOCK = 1 << 20


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex SHA-256 of a buffer."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in blocks so large checkpoints never sit in memory twice."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def hmac_sha256(key: bytes, data: bytes) -> str:
    """Hex HMAC-SHA-256, used to sign model manifests with a shared key."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests or tokens."""
    return hmac.compare_digest(a.encode(), b.encode())
