"""The embedded broker's guards against amqtt 0.12 gaps, each on a real broker over TCP.

Raw sockets speak MQTT where a client library would hide the behaviour under test (oversize
headers, MQTT 5, silent clients); aiomqtt elsewhere. See docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import amqtt
import psutil
import pytest
from amqtt.broker import Broker
from paho.mqtt.reasoncodes import ReasonCode

from broker.credentials import Credentials, ensure_credentials
from broker.embedded import EmbeddedBroker, guard_limits
from broker.framing import RemainingLength, packet_limit, parse_connect
from broker.guards import GuardLimits
from common.clientid import owned_client_id
from common.config import BrokerSettings, MqttSettings
from common.errors import ProtocolError
from common.mqtt import make_client

MiB = 1024 * 1024
ROBOTS = ["rover1", "rover2"]


# --- raw MQTT -------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def connect_packet(
    client_id: str,
    user: str | None = None,
    password: str | None = None,
    *,
    level: int = 4,
    keepalive: int = 30,
) -> bytes:
    flags = 0x02 | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    variable = mqtt_str("MQTT") + bytes([level, flags]) + keepalive.to_bytes(2, "big")
    if level == 5:
        variable += varint(5) + b"\x11\x00\x00\x00\x00"  # session expiry interval 0
    payload = mqtt_str(client_id)
    if user is not None:
        payload += mqtt_str(user)
    if password is not None:
        payload += mqtt_str(password)
    body = variable + payload
    return b"\x10" + varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int = 0) -> bytes:
    body = mqtt_str(topic) + (b"\x00\x01" if qos else b"") + payload
    return bytes([0x30 | qos << 1]) + varint(len(body)) + body


def subscribe_packet(topic: str, qos: int = 1, packet_id: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + mqtt_str(topic) + bytes([qos])
    return b"\x82" + varint(len(body)) + body


class Raw:
    """A bare TCP MQTT peer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> Raw:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), 10)

    async def connack(self) -> int:
        """The CONNACK return code (timeout if the broker never answers)."""
        packet = await asyncio.wait_for(self.reader.readexactly(4), 5)
        assert packet[:2] == b"\x20\x02", packet
        return packet[3]

    async def connect(self, client_id: str, user: str, password: str, **kw: int) -> int:
        """CONNECT as ``user`` with the client id ``<user>:<client_id>`` (ids are owned)."""
        await self.send(connect_packet(owned_client_id(user, client_id), user, password, **kw))
        return await self.connack()

    async def closed_by_broker(self, timeout: float = 10) -> bool:
        """Read (and discard) until EOF or reset: True when the broker closed the connection."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except ConnectionError:
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.writer.close()


# --- fixtures -------------------------------------------------------------------------------


class Secured:
    """An EmbeddedBroker with generated credentials (like conftest's, but exposing stats)."""

    def __init__(self, broker: EmbeddedBroker, creds: Credentials) -> None:
        self.broker, self.creds = broker, creds
        self.port = broker.port

    def pw(self, user: str) -> str:
        return self.creds.passwords[user]

    def mqtt(self, user: str) -> MqttSettings:
        return MqttSettings(url=self.creds.url_for(user, "127.0.0.1", self.port))


@contextlib.asynccontextmanager
async def secured(
    tmp_path: Path, *, max_connections: int = 256, **limits: float
) -> AsyncIterator[Secured]:
    creds = ensure_credentials(tmp_path / "data", ROBOTS)
    settings = BrokerSettings(port=0, max_connections=max_connections)
    base = guard_limits(settings)
    merged = GuardLimits(**{**base.__dict__, **limits})  # type: ignore[arg-type]
    async with EmbeddedBroker(settings, password_file=creds.password_file, limits=merged) as b:
        yield Secured(b, creds)


async def round_trip(s: Secured, topic: str = "ars/server/events") -> None:
    """A healthy publisher and subscriber still work."""
    async with make_client(s.mqtt("operator"), client_id="rt-sub") as sub:
        await sub.subscribe(topic, qos=1)
        async with make_client(s.mqtt("server"), client_id="rt-pub") as pub:
            await pub.publish(topic, b"still alive", qos=1)
        message = await asyncio.wait_for(anext(aiter(sub.messages)), 10)
        assert message.payload == b"still alive"


async def wait_for_stat(s: Secured, name: str, at_least: int, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.05)):
        if getattr(s.broker.stats, name) >= at_least:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"stats.{name} = {getattr(s.broker.stats, name)} < {at_least}: {s.broker.stats}")


def granted(codes: tuple[int, ...] | list[ReasonCode]) -> list[int]:
    return [int(c.value) if isinstance(c, ReasonCode) else int(c) for c in codes]


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


# --- unit: framing --------------------------------------------------------------------------


def test_remaining_length_and_connect_parsing() -> None:
    for n in (0, 127, 128, 16383, 16384, 256 * MiB - 1):
        decoder = RemainingLength()
        assert [decoder.feed(b) for b in varint(n)][-1] and decoder.value == n
    with pytest.raises(ProtocolError):
        decoder = RemainingLength()
        for b in b"\xff\xff\xff\xff":
            decoder.feed(b)
    body = connect_packet("c1", "u", "p")[2:]
    assert parse_connect(body).level == 4 and parse_connect(body).keepalive == 30
    assert parse_connect(connect_packet("c1", "u", "p", level=5)[2:]).level == 5
    with pytest.raises(ProtocolError):  # the flags promise a password the body lacks
        parse_connect(body[: -len(mqtt_str("p"))])
    assert packet_limit(2 * MiB) > 2 * MiB


def test_amqtt_hooks_exist() -> None:
    """The private amqtt methods HardenedBroker overrides: re-check when amqtt is upgraded."""
    assert amqtt.__version__ == "0.12.1"
    for name in ("stream_connected", "_client_connected", "_handle_message_delivery"):
        assert callable(getattr(Broker, name))
    assert callable(Broker._get_handler)


# --- 1. packet size -------------------------------------------------------------------------


async def test_oversize_publish_closed_before_the_body_is_read(tmp_path: Path) -> None:
    async with secured(tmp_path) as s:
        raw = await Raw.open(s.port)
        assert await raw.connect("big", "server", s.pw("server")) == 0
        before = rss()
        header = bytes([0x30]) + varint(256 * MiB - 1) + mqtt_str("ars/server/events")
        chunk = b"\0" * (64 * 1024)
        sent, refused = 0, False
        try:
            raw.writer.write(header)
            while sent < 32 * MiB:  # stream up to 32 MB of the declared 256 MB
                raw.writer.write(chunk)
                await asyncio.wait_for(raw.writer.drain(), 10)
                sent += len(chunk)
        except (ConnectionError, TimeoutError):
            refused = True
        refused = refused or await raw.closed_by_broker()
        grown = rss() - before
        raw.close()
        assert refused, "the broker kept reading a 256 MB packet"
        assert sent < 32 * MiB
        assert grown < 50 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
        assert s.broker.stats.oversize_packets == 1
        await round_trip(s)


async def test_payload_at_the_limit_still_delivered(tmp_path: Path) -> None:
    async with secured(tmp_path) as s:
        payload = b"x" * (2 * MiB)  # exactly max_payload_bytes
        async with make_client(s.mqtt("operator"), client_id="sub") as sub:
            await sub.subscribe("ars/robots/rover1/model/chunk", qos=1)
            async with make_client(s.mqtt("server"), client_id="pub") as pub:
                await pub.publish("ars/robots/rover1/model/chunk", payload, qos=1)
            message = await asyncio.wait_for(anext(aiter(sub.messages)), 10)
        assert message.payload == payload
        assert s.broker.stats.oversize_packets == 0


# --- 2. subscriber backlog ------------------------------------------------------------------


async def _slow_subscriber(s: Secured, topic: str) -> Raw:
    raw = await Raw.open(s.port, rcvbuf=4096)
    assert await raw.connect("slow", "operator", s.pw("operator")) == 0
    await raw.send(subscribe_packet(topic, qos=1))
    suback = await asyncio.wait_for(raw.reader.readexactly(5), 5)
    assert suback[0] == 0x90 and suback[4] == 1
    return raw  # and from now on it never reads


async def test_slow_subscriber_backlog_is_bounded(tmp_path: Path) -> None:
    async with secured(
        tmp_path, backlog_messages=50, backlog_bytes=1 * MiB, stall_timeout_s=120
    ) as s:
        topic = "ars/robots/rover1/preview"
        slow = await _slow_subscriber(s, topic)
        payload = b"p" * (256 * 1024)
        before = rss()
        async with make_client(s.mqtt("server"), client_id="flood") as pub:
            for i in range(200):  # 50 MB of QoS0 previews
                await pub.publish(topic, payload, qos=0)
                if i % 8 == 7:  # pace: the publisher's own buffer is not what we measure
                    await pub.publish("ars/server/events", b"sync", qos=1)
            await wait_for_stat(s, "backlog_drops", 150)
            grown = rss() - before
            # QoS0 beyond the bound is dropped; the subscriber stays connected
            assert s.broker.stats.slow_disconnects == 0
            assert grown < 50 * MiB, f"RSS grew by {grown / MiB:.0f} MiB for 50 MB published"
            # a QoS1 message that does not fit disconnects the slow subscriber
            await pub.publish(topic, b"must not be dropped silently", qos=1)
            await wait_for_stat(s, "slow_disconnects", 1)
        assert await slow.closed_by_broker(15)
        slow.close()
        assert s.broker.stats.slow_disconnects == 1
        await round_trip(s)


async def test_stalled_subscriber_disconnected(tmp_path: Path) -> None:
    async with secured(tmp_path, stall_timeout_s=1.0) as s:
        topic = "ars/robots/rover1/preview"
        slow = await _slow_subscriber(s, topic)
        async with make_client(s.mqtt("server"), client_id="flood") as pub:
            for _ in range(40):  # 10 MB: more than the socket buffers hold
                await pub.publish(topic, b"p" * (256 * 1024), qos=0)
            await wait_for_stat(s, "stalled_writers", 1, timeout=20)
        assert await slow.closed_by_broker(10)
        slow.close()
        assert s.broker.stats.stalled_writers == 1
        await round_trip(s)


# --- 3. MQTT 5 and connection slots ---------------------------------------------------------


async def test_mqtt5_refused_promptly_and_slot_freed(tmp_path: Path) -> None:
    async with secured(tmp_path, max_connections=3) as s:
        for i in range(4):  # max_connections + 1, one after the other
            raw = await Raw.open(s.port)
            await raw.send(connect_packet(f"v5-{i}", "server", s.pw("server"), level=5))
            assert await raw.connack() == 0x01  # unacceptable protocol version
            assert await raw.closed_by_broker(5)
            raw.close()
        assert s.broker.stats.bad_protocol == 4
        await round_trip(s)


async def test_max_connections_refuses_the_extra_client(tmp_path: Path) -> None:
    async with secured(tmp_path, max_connections=3) as s:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(make_client(s.mqtt("server"), client_id=f"c{i}"))
                for i in range(3)
            ]
            with pytest.raises(aiomqtt.MqttError):
                async with make_client(s.mqtt("server"), client_id="extra"):
                    pass
            assert s.broker.stats.refused_full >= 1
            assert len(clients) == 3
        # the slots are released once those clients are gone
        for _ in range(50):
            with contextlib.suppress(aiomqtt.MqttError):
                async with make_client(s.mqtt("server"), client_id="later"):
                    break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("no slot freed after the clients disconnected")


async def test_silent_clients_time_out_and_free_their_slots(tmp_path: Path) -> None:
    async with secured(tmp_path, max_connections=2, connect_timeout_s=0.5) as s:
        silent = [await Raw.open(s.port) for _ in range(2)]  # TCP open, no CONNECT
        for raw in silent:
            assert await raw.closed_by_broker(10)
            raw.close()
        assert s.broker.stats.connect_timeouts == 2
        await round_trip(s)


async def test_keepalive_enforced(tmp_path: Path) -> None:
    async with secured(tmp_path) as s:
        raw = await Raw.open(s.port)
        assert await raw.connect("sleepy", "server", s.pw("server"), keepalive=1) == 0
        assert await raw.closed_by_broker(10)  # silent for 1.5 s: dropped
        raw.close()
        assert s.broker.stats.idle_timeouts == 1


async def test_malformed_connect_closed_not_hung(tmp_path: Path) -> None:
    async with secured(tmp_path, max_connections=2) as s:
        for i in range(3):
            packet = connect_packet(f"bad{i}", "server", s.pw("server"))
            body = packet[2:-3]  # cut into the password, length fixed up: flags lie
            raw = await Raw.open(s.port)
            await raw.send(b"\x10" + varint(len(body)) + body)
            assert await raw.closed_by_broker(5)
            raw.close()
        assert s.broker.stats.malformed_connect == 3
        await round_trip(s)


# --- 4. authentication ----------------------------------------------------------------------


async def test_unknown_user_and_missing_password_refused(tmp_path: Path) -> None:
    async with secured(tmp_path) as s:
        cases: list[tuple[str, str | None]] = [
            ("nobody", "anything"),
            ("nobody", None),
            ("server", None),  # a known user without a password
            ("robot-rover1", s.pw("robot-rover2")),  # another user's password
        ]
        for i, (user, password) in enumerate(cases):
            raw = await Raw.open(s.port)
            await raw.send(connect_packet(f"a{i}", user, password))
            assert await raw.connack() != 0, (user, password)
            assert await raw.closed_by_broker(5)
            raw.close()
        raw = await Raw.open(s.port)
        assert await raw.connect("ok", "robot-rover1", s.pw("robot-rover1")) == 0
        raw.close()


# --- 5. ACL: publish, subscribe and receive -------------------------------------------------


async def test_robot_cannot_see_other_robots_even_with_wildcards(tmp_path: Path) -> None:
    async with secured(tmp_path) as s:
        async with make_client(s.mqtt("robot-rover1"), client_id="rover1") as robot:
            refused = ["ars/robots/+/cmd", "ars/#", "#", "ars/robots/rover2/#", "+/robots/#"]
            for topic in refused:
                codes = await robot.subscribe(topic, qos=1)
                assert granted(codes) == [0x80], topic
            codes = await robot.subscribe("ars/robots/rover1/#", qos=1)
            assert granted(codes) == [1]
            async with make_client(s.mqtt("operator"), client_id="op") as op:
                for topic in (
                    "ars/robots/rover2/cmd",
                    "ars/robots/rover2/model/chunk",
                    "ars/server/cmd",
                    "ars/robots/rover1/cmd",
                ):
                    await op.publish(topic, topic.encode(), qos=1)
            message = await asyncio.wait_for(anext(aiter(robot.messages)), 10)
            assert str(message.topic) == "ars/robots/rover1/cmd"
            with pytest.raises(TimeoutError):  # nothing else arrives
                await asyncio.wait_for(anext(aiter(robot.messages)), 0.5)
        # publish: only its own leaves, checked by a watcher
        async with make_client(s.mqtt("operator"), client_id="watch") as watcher:
            await watcher.subscribe("ars/#", qos=1)
            async with make_client(s.mqtt("robot-rover1"), client_id="rover1") as robot:
                for topic in ("ars/robots/rover2/state", "ars/robots/rover1/cmd", "ars/x"):
                    await robot.publish(topic, b"forged", qos=1)
                await robot.publish("ars/robots/rover1/state", b"own", qos=1)
            message = await asyncio.wait_for(anext(aiter(watcher.messages)), 10)
            assert (str(message.topic), message.payload) == ("ars/robots/rover1/state", b"own")


# --- 6. QoS ---------------------------------------------------------------------------------


async def test_delivery_qos_is_min_of_publish_and_subscription(tmp_path: Path) -> None:
    async with (
        secured(tmp_path) as s,
        make_client(s.mqtt("operator"), client_id="q1") as q1,
        make_client(s.mqtt("server"), client_id="q0") as q0,
    ):
        await q1.subscribe("ars/server/events", qos=1)
        await q0.subscribe("ars/server/events", qos=0)
        async with make_client(s.mqtt("server"), client_id="pub") as pub:
            await pub.publish("ars/server/events", b"qos0", qos=0)
            await pub.publish("ars/server/events", b"qos1", qos=1)
            await pub.publish("ars/server/state", b"retained0", qos=0, retain=True)
        got1 = [await asyncio.wait_for(anext(aiter(q1.messages)), 10) for _ in range(2)]
        got0 = [await asyncio.wait_for(anext(aiter(q0.messages)), 10) for _ in range(2)]
        assert [(m.payload, m.qos) for m in got1] == [(b"qos0", 0), (b"qos1", 1)]
        assert [(m.payload, m.qos) for m in got0] == [(b"qos0", 0), (b"qos1", 0)]
        await q1.subscribe("ars/server/state", qos=1)  # a retained QoS0 message stays QoS0
        retained = await asyncio.wait_for(anext(aiter(q1.messages)), 10)
        assert (retained.payload, retained.qos) == (b"retained0", 0)


# --- Mosquitto deployment config ------------------------------------------------------------


def test_mosquitto_config_with_tls(tmp_path: Path) -> None:
    from broker.mosquitto import write_mosquitto_config

    creds = ensure_credentials(tmp_path / "data", ROBOTS)
    certs = [tmp_path / name for name in ("broker.crt", "broker.key", "ca.crt")]
    conf = write_mosquitto_config(
        tmp_path / "conf",
        creds,
        ROBOTS,
        port=8883,
        host="0.0.0.0",
        tls_cert=certs[0],
        tls_key=certs[1],
        tls_ca=certs[2],
    )
    lines = conf.read_text().splitlines()
    assert lines.index("listener 8883 0.0.0.0") < lines.index(f"certfile {certs[0]}")
    assert "require_certificate true" in lines and "allow_anonymous false" in lines
    assert f"max_packet_size {packet_limit(2 * MiB) + 5}" in lines
    acl = (tmp_path / "conf" / "acl").read_text()
    assert (
        "topic read ars/robots/rover2/#" in acl and "topic write ars/robots/rover1/cmd" not in acl
    )
