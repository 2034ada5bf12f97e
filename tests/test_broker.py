"""Brokers: password authentication, per-robot ACL and credential files, on amqtt and Mosquitto."""

from __future__ import annotations

import asyncio
import stat

import aiomqtt
import pytest

from broker.credentials import hash_password, read_password_file, verify_password
from broker.plugins import topic_matches
from common.config import MqttSettings
from common.mqtt import make_client
from tests.helpers.brokers import BrokerHandle


def test_password_hash_round_trip_and_salt() -> None:
    a, b = hash_password("pw"), hash_password("pw")
    assert a != b and a.startswith("scrypt$")
    assert verify_password("pw", a) and not verify_password("nope", a)
    assert not verify_password("pw", "scrypt$garbage")


def test_topic_matches() -> None:
    assert topic_matches("ars/robots/r1/state", "ars/robots/+/state")
    assert topic_matches("ars/robots/r1/model/chunk", "ars/#")
    assert not topic_matches("ars/robots/r1/state", "ars/robots/r2/#")
    assert not topic_matches("ars/robots", "ars/robots/+")


async def test_credentials_files_are_private_and_hashed(broker: BrokerHandle) -> None:
    creds = broker.creds
    for path in (creds.password_file, creds.secrets_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    hashed = read_password_file(creds.password_file)
    assert set(hashed) == set(creds.passwords)
    text = creds.password_file.read_text()
    assert all(pw not in text for pw in creds.passwords.values())


async def _connect(settings: MqttSettings) -> None:
    async with make_client(settings, client_id="probe"):
        pass


async def test_wrong_password_and_anonymous_refused(any_broker: BrokerHandle) -> None:
    handle = any_broker
    await _connect(handle.mqtt("server"))  # the right password works
    for url in (
        f"mqtt://server:wrong@127.0.0.1:{handle.port}",
        f"mqtt://nobody:x@127.0.0.1:{handle.port}",
        f"mqtt://127.0.0.1:{handle.port}",
    ):
        with pytest.raises(aiomqtt.MqttError):
            await _connect(MqttSettings(url=url))


async def test_acl_robot_writes_only_its_own_topics(any_broker: BrokerHandle) -> None:
    handle = any_broker
    received: list[tuple[str, bytes]] = []
    async with make_client(handle.mqtt("operator"), client_id="watcher") as watcher:
        await watcher.subscribe("ars/#", qos=1)
        async with make_client(handle.mqtt("robot-rover1"), client_id="rover1") as robot:
            await robot.publish("ars/robots/rover1/state", b"own", qos=1)
            await robot.publish("ars/robots/rover2/state", b"other robot", qos=1)
            await robot.publish("ars/robots/rover1/model/offer", b"own model offer", qos=1)
            await robot.publish("ars/robots/rover2/cmd", b"command for another", qos=1)
            await robot.publish("ars/server/cmd", b"server command", qos=1)
            await robot.publish("ars/robots/rover1/events", b"own event", qos=1)

        async def collect() -> None:
            async for message in watcher.messages:
                assert isinstance(message.payload, bytes)
                received.append((str(message.topic), message.payload))
                if message.payload == b"own event":
                    return

        await asyncio.wait_for(collect(), 5)
    assert received == [
        ("ars/robots/rover1/state", b"own"),
        ("ars/robots/rover1/events", b"own event"),
    ]


async def test_robot_cannot_read_other_robots_commands(broker: BrokerHandle) -> None:
    async with make_client(broker.mqtt("robot-rover1"), client_id="rover1") as robot:
        await robot.subscribe("ars/robots/rover2/cmd", qos=1)
        await robot.subscribe("ars/robots/rover1/cmd", qos=1)
        async with make_client(broker.mqtt("operator"), client_id="op") as op:
            await op.publish("ars/robots/rover2/cmd", b"secret", qos=1)
            await op.publish("ars/robots/rover1/cmd", b"mine", qos=1)
        message = await asyncio.wait_for(anext(aiter(robot.messages)), 5)
        assert message.payload == b"mine"
