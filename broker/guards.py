"""Per-connection guards around amqtt 0.12's stream adapters (see docs/security.md).

- ``GuardedReader`` frames the incoming byte stream itself: it refuses a packet whose fixed
  header declares more than the limit before a byte of its body is read, requires a complete and
  well-formed CONNECT within ``connect_timeout_s``, answers non-3.1.1 clients (MQTT 5) with
  CONNACK 0x01 at once, and drops clients silent for 1.5x their keepalive (amqtt never does).
  It hands amqtt exactly one packet's bytes at a time, so amqtt's parser cannot run past a packet.
  With an ``Admission`` it also checks the CONNECT's credentials and client id owner and answers
  a refusal itself, so a refused CONNECT never reaches amqtt's session table.
- ``GuardedWriter`` can abort a connection, and gives up on a peer that accepts no bytes for
  ``stall_timeout_s`` (amqtt would wait forever in ``drain``).
- ``BoundedPublish`` wraps one subscriber's ``mqtt_publish``: delivers at min(publish QoS,
  subscription QoS) and bounds the subscriber's backlog (QoS0 beyond it dropped, QoS1/2 beyond
  it disconnects the subscriber).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter
from amqtt.errors import ProtocolHandlerError
from amqtt.session import OutgoingApplicationMessage

from broker.framing import (
    CONNACK_BAD_PROTOCOL,
    CONNACK_ID_REJECTED,
    CONNECT,
    CONNECT_LIMIT,
    PROTOCOL_LEVEL_311,
    RemainingLength,
    parse_connect,
)
from common.errors import ProtocolError

if TYPE_CHECKING:
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

    from broker.admission import Admission

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardLimits:
    """Limits of one broker; defaults suit a robot fleet on a LAN."""

    max_packet_bytes: int
    connect_timeout_s: float = 10.0
    stall_timeout_s: float = 15.0
    backlog_messages: int = 1000
    backlog_bytes: int = 32 * 1024 * 1024


@dataclass
class GuardStats:
    """What the guards refused, for logs and tests (counts since the broker started)."""

    oversize_packets: int = 0
    bad_protocol: int = 0
    malformed_connect: int = 0
    connect_timeouts: int = 0
    idle_timeouts: int = 0
    refused_full: int = 0
    stalled_writers: int = 0
    backlog_drops: int = 0
    slow_disconnects: int = 0
    refused_credentials: int = 0
    refused_client_ids: int = 0


class GuardedWriter(StreamWriterAdapter):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's writer adapter plus ``abort`` and a bound on how long one drain may block."""

    def __init__(
        self, writer: asyncio.StreamWriter, limits: GuardLimits, stats: GuardStats
    ) -> None:
        super().__init__(writer)
        self.is_closed = False
        self._stream = writer
        self._limits = limits
        self._stats = stats
        self.peer = str(writer.get_extra_info("peername"))

    def abort(self, reason: str) -> None:
        """Drop the connection now (no flush); amqtt sees EOF and cleans the session up."""
        if not self.is_closed:
            logger.warning("broker: closing %s: %s", self.peer, reason)
        self.is_closed = True
        self._stream.transport.abort()

    async def drain(self) -> None:
        if self.is_closed:
            return
        try:
            await asyncio.wait_for(self._stream.drain(), self._limits.stall_timeout_s)
        except TimeoutError:
            self._stats.stalled_writers += 1
            self.abort(f"peer accepted no data for {self._limits.stall_timeout_s:.0f} s")
            raise ConnectionResetError("slow subscriber disconnected") from None

    async def close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        try:
            await asyncio.wait_for(self._stream.drain(), self._limits.stall_timeout_s)
        except (TimeoutError, ConnectionError):
            self._stream.transport.abort()
            return
        self._stream.close()

    async def refuse(self, packet: bytes) -> None:
        """Send one last packet (a CONNACK), then close gracefully so it is delivered."""
        self._stream.write(packet)
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(self._stream.drain(), 5)
        self.is_closed = True
        self._stream.close()


class GuardedReader(ReaderAdapter):  # type: ignore[misc]  # amqtt is untyped
    """Reads exactly one MQTT packet at a time after checking its fixed header."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: GuardedWriter,
        limits: GuardLimits,
        stats: GuardStats,
        admission: Admission | None = None,
    ) -> None:
        self._reader = reader
        self._admission = admission
        self._writer = writer
        self._limits = limits
        self._stats = stats
        self._pending = bytearray()  # checked bytes not yet handed to amqtt
        self._body_left = 0  # body bytes of the current packet still in the socket
        self._header = bytearray()  # the next fixed header, kept across cancellations
        self._length = RemainingLength()
        self._connected = False
        self._idle_limit: float | None = None
        self._last_packet = asyncio.get_running_loop().time()
        self._closed = False

    async def read(self, n: int = -1) -> bytes:
        if self._closed or n == 0:
            return b""
        if not self._pending and self._body_left == 0 and not await self._next_packet():
            return b""
        if self._pending:
            take = len(self._pending) if n < 0 else n
            out = bytes(self._pending[:take])
            del self._pending[:take]
            return out
        want = self._body_left if n < 0 else min(n, self._body_left)
        data = await self._reader.readexactly(want)
        self._body_left -= want
        return data

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    def _close(self, reason: str) -> bool:
        self._closed = True
        self._writer.abort(reason)
        return False

    async def _next_packet(self) -> bool:
        """Read and check the next fixed header (and a first CONNECT whole); False = closed."""
        loop = asyncio.get_running_loop()
        try:
            if not self._connected:
                async with asyncio.timeout(self._limits.connect_timeout_s):
                    return await self._first_packet()
            while not self._length.done:
                if self._idle_limit is not None:
                    left = self._last_packet + self._idle_limit - loop.time()
                    if left <= 0:
                        self._stats.idle_timeouts += 1
                        return self._close(f"no packet for {self._idle_limit:.0f} s (keepalive)")
                    async with asyncio.timeout(left):
                        await self._header_byte()
                else:
                    await self._header_byte()
        except TimeoutError:
            if not self._connected:
                self._stats.connect_timeouts += 1
                return self._close(f"no CONNECT within {self._limits.connect_timeout_s:.0f} s")
            self._stats.idle_timeouts += 1
            return self._close(f"no packet for {self._idle_limit or 0:.0f} s (keepalive)")
        except (asyncio.IncompleteReadError, ConnectionError):
            self._closed = True
            return False
        except ProtocolError as exc:
            return self._close(f"bad fixed header: {exc}")
        self._last_packet = loop.time()
        length = self._length.value
        if length > self._limits.max_packet_bytes:
            self._stats.oversize_packets += 1
            return self._close(
                f"packet type {self._header[0] >> 4} declares {length} bytes, over the "
                f"{self._limits.max_packet_bytes}-byte limit"
            )
        self._pending += self._header
        self._body_left = length
        self._header.clear()
        self._length = RemainingLength()
        return True

    async def _header_byte(self) -> None:
        byte = (await self._reader.readexactly(1))[0]
        self._header.append(byte)
        if len(self._header) > 1:
            self._length.feed(byte)

    async def _first_packet(self) -> bool:
        while not self._length.done:
            await self._header_byte()
        if self._header[0] >> 4 != CONNECT:
            self._stats.malformed_connect += 1
            return self._close("first packet is not CONNECT")
        length = self._length.value
        if length > CONNECT_LIMIT:
            self._stats.oversize_packets += 1
            return self._close(f"CONNECT of {length} bytes")
        body = await self._reader.readexactly(length)
        try:
            info = parse_connect(body)
        except ProtocolError as exc:
            self._stats.malformed_connect += 1
            return self._close(str(exc))
        if info.protocol_name != "MQTT" or info.level != PROTOCOL_LEVEL_311:
            self._stats.bad_protocol += 1
            logger.warning(
                "broker: refusing %s: protocol %s level %d (only MQTT 3.1.1)",
                self._writer.peer,
                info.protocol_name,
                info.level,
            )
            self._closed = True
            await self._writer.refuse(CONNACK_BAD_PROTOCOL)
            return False
        if self._admission is not None:
            refusal = await self._admission.refusal(info)
            if refusal is not None:
                if refusal.connack == CONNACK_ID_REJECTED:
                    self._stats.refused_client_ids += 1
                else:
                    self._stats.refused_credentials += 1
                logger.warning("broker: refusing %s: %s", self._writer.peer, refusal.reason)
                self._closed = True
                await self._writer.refuse(refusal.connack)
                return False
        self._connected = True
        self._idle_limit = 1.5 * info.keepalive if info.keepalive > 0 else None
        self._last_packet = asyncio.get_running_loop().time()
        self._pending += self._header + body
        self._header.clear()
        self._length = RemainingLength()
        return True


class QosCapped(bytes):
    """A published payload that remembers its publish QoS, so delivery never upgrades it."""

    max_qos: int

    def __new__(cls, data: bytes | bytearray, max_qos: int) -> QosCapped:
        obj = super().__new__(cls, data)
        obj.max_qos = max_qos
        return obj


class BoundedPublish:
    """Replaces one subscriber handler's ``mqtt_publish``: QoS cap and backlog bound."""

    def __init__(
        self, handler: BrokerProtocolHandler, limits: GuardLimits, stats: GuardStats
    ) -> None:
        self._publish = handler.mqtt_publish
        self._handler = handler
        self._limits = limits
        self._stats = stats
        self.messages = 0
        self.bytes = 0

    async def __call__(
        self,
        topic: str,
        data: bytes | bytearray,
        qos: int | None,
        retain: bool,
        ack_timeout: int | None = None,
    ) -> OutgoingApplicationMessage:
        if qos is not None and isinstance(data, QosCapped):
            qos = min(qos, data.max_qos)
        size = len(data)
        limits = self._limits
        if self.messages >= limits.backlog_messages or self.bytes + size > limits.backlog_bytes:
            writer = self._handler.writer
            if not qos:
                self._stats.backlog_drops += 1
                if self._stats.backlog_drops % 1000 == 1:
                    logger.warning(
                        "broker: subscriber backlog full (%d messages, %d bytes): QoS0 dropped",
                        self.messages,
                        self.bytes,
                    )
            elif isinstance(writer, GuardedWriter) and not writer.is_closed:
                self._stats.slow_disconnects += 1
                writer.abort(
                    f"subscriber backlog over {self.messages} messages / {self.bytes} bytes"
                )
            return OutgoingApplicationMessage(None, topic, qos, b"", retain)
        self.messages += 1
        self.bytes += size
        try:
            return await self._publish(topic, data, qos, retain, ack_timeout)
        except ProtocolHandlerError:  # cancelled at shutdown or on disconnect: nothing to report
            return OutgoingApplicationMessage(None, topic, qos, b"", retain)
        finally:
            self.messages -= 1
            self.bytes -= size
