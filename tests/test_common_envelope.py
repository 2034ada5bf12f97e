"""Envelope codec: round trip, limits checked before parsing, every defect refused."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.envelope import MAGIC, MAX_HEADER_BYTES, decode, encode
from common.errors import PayloadTooLarge, ProtocolError


def test_round_trip_keeps_header_and_parts() -> None:
    payload = encode({"type": "x", "n": 3}, [b"abc", b"", b"\x00" * 10])
    env = decode(payload)
    assert env.header == {"type": "x", "n": 3, "v": 1}
    assert env.parts == [b"abc", b"", b"\x00" * 10]


def test_layout_is_magic_length_json_parts() -> None:
    payload = encode({"a": 1}, [b"zz"])
    magic, hlen = struct.unpack_from(">4sI", payload)
    assert magic == MAGIC
    assert json.loads(payload[8 : 8 + hlen]) == {"a": 1, "v": 1, "parts": [2]}
    assert payload[8 + hlen :] == b"zz"


def test_size_limit_checked_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge):
        decode(b"garbage" * 100, max_bytes=100)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"AR", "truncated"),
        (b"XXXX" + struct.pack(">I", 2) + b"{}", "magic"),
        (MAGIC + struct.pack(">I", 50) + b"{}", "truncated"),
        (MAGIC + struct.pack(">I", 5) + b"{nope", "JSON"),
        (MAGIC + struct.pack(">I", 2) + b"[]", "object"),
        (MAGIC + struct.pack(">I", 9) + b'{"v":2}xx', "JSON"),
    ],
)
def test_malformed_envelopes_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(payload)


def test_wrong_schema_version_refused() -> None:
    raw = json.dumps({"v": 2, "parts": []}).encode()
    with pytest.raises(ProtocolError, match="schema version 2"):
        decode(MAGIC + struct.pack(">I", len(raw)) + raw)


def test_huge_declared_header_refused_without_reading() -> None:
    with pytest.raises(PayloadTooLarge):
        decode(MAGIC + struct.pack(">I", MAX_HEADER_BYTES + 1) + b"{}")


def test_declared_part_lengths_must_match_bytes() -> None:
    payload = encode({}, [b"abcd"])
    with pytest.raises(ProtocolError, match="declare 4 bytes, 3 present"):
        decode(payload[:-1])
    raw = json.dumps({"v": 1, "parts": [-1]}).encode()
    with pytest.raises(ProtocolError, match="non-negative"):
        decode(MAGIC + struct.pack(">I", len(raw)) + raw)


def test_nan_in_header_refused() -> None:
    raw = b'{"v":1,"parts":[],"x":NaN}'
    with pytest.raises(ProtocolError):
        decode(MAGIC + struct.pack(">I", len(raw)) + raw)
    with pytest.raises(ProtocolError):
        encode({"x": float("nan")})


@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


@given(
    st.lists(st.binary(max_size=50), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers()),
)
def test_round_trip_property(parts: list[bytes], header: dict[str, int]) -> None:
    header.pop("parts", None)
    header.pop("v", None)
    env = decode(encode(header, parts))
    assert env.parts == parts
    assert {k: v for k, v in env.header.items() if k != "v"} == header
