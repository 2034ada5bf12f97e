"""Binary envelope: a length-prefixed JSON header followed by raw binary parts (never base64).

Layout (all integers big-endian)::

    magic  b"ARSE"            4 bytes
    hlen   uint32             4 bytes, length of the JSON header
    header JSON (UTF-8)       hlen bytes; holds "v" (schema version), "parts" (part lengths)
    parts  raw bytes          concatenated, lengths as listed in the header

The total size limit is checked before anything is parsed, the header size before it is decoded,
and the declared part lengths against the bytes actually present.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from common.errors import PayloadTooLarge, ProtocolError

MAGIC = b"ARSE"
SCHEMA_VERSION = 1
_PREFIX = struct.Struct(">4sI")
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope: the JSON header (without ``parts``) and the raw parts."""

    header: dict[str, Any]
    parts: list[bytes] = field(default_factory=list)


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"envelope header holds a non-finite number ({name})")


def encode(header: dict[str, Any], parts: Sequence[bytes] = ()) -> bytes:
    """Encode ``header`` and ``parts``; ``v`` defaults to the current schema version."""
    body = dict(header)
    body.setdefault("v", SCHEMA_VERSION)
    body["parts"] = [len(p) for p in parts]
    for value in body.values():
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError("envelope header values must be finite numbers")
    raw = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise PayloadTooLarge(f"envelope header is {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    return b"".join([_PREFIX.pack(MAGIC, len(raw)), raw, *parts])


def decode(
    payload: bytes | bytearray,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expected_version: int = SCHEMA_VERSION,
) -> Envelope:
    """Decode an envelope, checking every size before parsing; ProtocolError on any defect."""
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"envelope is {len(payload)} bytes, limit {max_bytes}")
    if len(payload) < _PREFIX.size:
        raise ProtocolError(f"envelope truncated: {len(payload)} bytes, need {_PREFIX.size}")
    magic, hlen = _PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise ProtocolError("not an envelope: bad magic")
    if hlen > MAX_HEADER_BYTES:
        raise PayloadTooLarge(f"declared header of {hlen} bytes, limit {MAX_HEADER_BYTES}")
    start = _PREFIX.size
    if start + hlen > len(payload):
        raise ProtocolError(f"envelope truncated: header declares {hlen} bytes")
    try:
        header = json.loads(
            bytes(payload[start : start + hlen]).decode("utf-8"), parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"envelope header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("envelope header must be a JSON object")
    version = header.get("v")
    if version != expected_version:
        raise ProtocolError(f"unsupported schema version {version!r}, expected {expected_version}")
    lengths = header.pop("parts", None)
    if not isinstance(lengths, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths
    ):
        raise ProtocolError("envelope header 'parts' must be a list of non-negative integers")
    offset = start + hlen
    if offset + sum(lengths) != len(payload):
        raise ProtocolError(
            f"envelope parts declare {sum(lengths)} bytes, {len(payload) - offset} present"
        )
    parts: list[bytes] = []
    for n in lengths:
        parts.append(bytes(payload[offset : offset + n]))
        offset += n
    return Envelope(header=header, parts=parts)
