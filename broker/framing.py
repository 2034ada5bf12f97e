"""MQTT 3.1.1 framing the broker guard needs before amqtt sees a byte: packet limits and CONNECT.

amqtt reads a packet body in one ``readexactly(remaining_length)`` and parses CONNECT without
bounds, so the guard frames the stream itself: it decides from the fixed header alone whether a
packet may be read, and checks a CONNECT's structure so that amqtt's parser never waits for
bytes that are not coming (MQTT 5 properties make it do just that).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from common.errors import ProtocolError

CONNECT = 1
#: Room for the topic (up to 65535 bytes + 2), the packet id and the variable header.
PACKET_OVERHEAD = 64 * 1024 + 8
#: A CONNECT carries a client id, credentials and a small will: 64 KiB is plenty.
CONNECT_LIMIT = 64 * 1024
#: CONNACK, return code 0x01: unacceptable protocol version (3.1.1 framing, understood by all).
CONNACK_BAD_PROTOCOL = b"\x20\x02\x00\x01"
#: CONNACK, return code 0x02: identifier rejected (the client id belongs to another user).
CONNACK_ID_REJECTED = b"\x20\x02\x00\x02"
#: CONNACK, return code 0x03: server unavailable (the listener is full).
CONNACK_SERVER_UNAVAILABLE = b"\x20\x02\x00\x03"
#: CONNACK, return code 0x04: bad user name or password.
CONNACK_BAD_CREDENTIALS = b"\x20\x02\x00\x04"
#: CONNACK, return code 0x05: not authorised (no user name while anonymous access is off).
CONNACK_NOT_AUTHORISED = b"\x20\x02\x00\x05"
PROTOCOL_LEVEL_311 = 4


def packet_limit(max_payload_bytes: int) -> int:
    """Largest remaining length accepted: the payload limit plus topic and header room."""
    return max_payload_bytes + PACKET_OVERHEAD


class RemainingLength:
    """Incremental decoder of the fixed header's variable-length integer (1 to 4 bytes)."""

    def __init__(self) -> None:
        self.value = 0
        self.count = 0
        self.done = False

    def feed(self, byte: int) -> bool:
        """Add one byte; True once the integer is complete. ProtocolError past 4 bytes."""
        if self.done:
            raise ProtocolError("remaining length already complete")
        self.value += (byte & 0x7F) << (7 * self.count)
        self.count += 1
        if byte & 0x80 == 0:
            self.done = True
        elif self.count == 4:
            raise ProtocolError("remaining length longer than 4 bytes")
        return self.done


@dataclass(frozen=True)
class ConnectInfo:
    protocol_name: str
    level: int
    keepalive: int
    client_id: str = ""
    username: str | None = None
    password: bytes | None = field(default=None, repr=False)


def _string(body: bytes, pos: int, what: str) -> int:
    if pos + 2 > len(body):
        raise ProtocolError(f"CONNECT truncated before {what}")
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    if end > len(body):
        raise ProtocolError(f"CONNECT {what} runs past the packet")
    return end


def _text(body: bytes, pos: int, end: int, what: str) -> str:
    try:
        return body[pos + 2 : end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"CONNECT {what} is not UTF-8") from exc


def parse_connect(body: bytes) -> ConnectInfo:
    """Protocol name, level, keepalive, client id and credentials of a CONNECT body;
    ProtocolError when malformed.

    For 3.1.1 (level 4) the whole payload is walked, so a body whose flags announce fields it
    does not hold (or holds extra bytes) is refused here instead of hanging amqtt's parser.
    Other levels are only identified: they get CONNACK 0x01 whatever follows.
    """
    end = _string(body, 0, "protocol name")
    name = body[2:end].decode("utf-8", "replace")
    if end + 4 > len(body):
        raise ProtocolError("CONNECT truncated in the variable header")
    level, flags = body[end], body[end + 1]
    keepalive = int.from_bytes(body[end + 2 : end + 4], "big")
    info = ConnectInfo(protocol_name=name, level=level, keepalive=keepalive)
    if name != "MQTT" or level != PROTOCOL_LEVEL_311:
        return info
    if flags & 0x01:
        raise ProtocolError("CONNECT reserved flag set")
    start = end + 4
    pos = _string(body, start, "client id")
    client_id = _text(body, start, pos, "client id")
    username: str | None = None
    password: bytes | None = None
    if flags & 0x04:
        pos = _string(body, pos, "will topic")
        pos = _string(body, pos, "will message")
    if flags & 0x80:
        start, pos = pos, _string(body, pos, "user name")
        username = _text(body, start, pos, "user name")
    if flags & 0x40:
        start, pos = pos, _string(body, pos, "password")
        password = body[start + 2 : pos]
    if pos != len(body):
        raise ProtocolError(f"CONNECT has {len(body) - pos} unexpected trailing bytes")
    return replace(info, client_id=client_id, username=username, password=password)
