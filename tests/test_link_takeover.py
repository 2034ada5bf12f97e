"""No client can silence an agent (issue 15), on the embedded broker and on Mosquitto.

- A CONNECT with bad credentials, or with another user's client id, is refused before the broker
  touches the session of that id: the agent holding it stays connected and keeps receiving.
- A link that is connected but deaf (the broker stopped delivering;
  ``tests/helpers/deafproxy.py`` drops the broker's PUBLISH packets while pings pass) notices
  within two keepalive periods through its own heartbeat, reconnects, resubscribes, and each
  agent says so with a warning event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from common.clientid import owned_client_id, owns_client_id
from common.config import MqttSettings, Settings, WebSettings
from common.mqtt import MqttLink
from common.schemas import Event
from common.topics import Topics
from tests.helpers.brokers import BrokerHandle
from tests.helpers.deafproxy import DeafProxy
from tests.test_broker_security import Raw, connect_packet

TOPICS = Topics("ars")
#: Small enough for short tests, large enough that a loaded CI machine does not look deaf.
KEEPALIVE = 2


def test_client_id_owner_rule() -> None:
    assert owned_client_id("server", "ars-server") == "server:ars-server"
    assert owned_client_id("server", "server:x") == "server:x"
    assert owned_client_id(None, "cli") == "anonymous:cli"
    assert owns_client_id("robot-rover1", "robot-rover1:ars-robot-rover1")
    assert not owns_client_id("robot-rover1", "server:ars-server")
    assert not owns_client_id("robot-rover1", "robot-rover1:")  # empty name
    assert not owns_client_id("robot-rover1", "robot-rover12:x")  # another user's prefix
    assert not owns_client_id("robot-rover1", "robot-rover1-b:x")
    assert not owns_client_id("server", "ars-server")  # the old fixed ids


@contextlib.asynccontextmanager
async def listening(settings: MqttSettings, topic: str, **kw: Any) -> AsyncIterator[MqttLink]:
    async with MqttLink(settings, client_id="ars-server", subscriptions=[(topic, 1)], **kw) as link:
        await link.wait_connected(10)
        yield link


async def hears(link: MqttLink, sender: MqttLink, topic: str, payload: bytes) -> None:
    """``sender`` publishes ``payload`` on ``topic`` and ``link`` receives it within 5 s."""
    await sender.publish(topic, payload, qos=1)
    async with asyncio.timeout(5):
        async for _topic, received in link.messages():
            if received == payload:
                return


async def test_takeover_refused_and_victim_keeps_hearing(any_broker: BrokerHandle) -> None:
    broker = any_broker
    topic = TOPICS.server_cmd
    embedded = broker.data_dir.name == "broker-data"
    pw = broker.creds.passwords
    attacks = [  # (client id, user, password, CONNACK from the embedded broker)
        ("ars-server", "nobody", "x", 4),  # the attack: unknown user, old fixed id
        ("server:ars-server", "nobody", "x", 4),  # ... with the new id
        ("server:ars-server", "server", "wrong", 4),  # right user, wrong password
        ("server:ars-server", "robot-rover1", pw["robot-rover1"], 2),  # another user's id
        ("ars-server", "robot-rover1", pw["robot-rover1"], 2),
        ("ars-server", "server", pw["server"], 2),  # even its own user: ids are <user>:<name>
    ]
    async with (
        listening(broker.mqtt("server"), topic) as victim,
        MqttLink(broker.mqtt("operator"), client_id="sender") as sender,
    ):
        await sender.wait_connected(10)
        await hears(victim, sender, topic, b"before")
        for client_id, user, password, code in attacks:
            raw = await Raw.open(broker.port)
            await raw.send(connect_packet(client_id, user, password))
            got = await raw.connack()
            assert got != 0, (client_id, user)
            if embedded:
                assert got == code, (client_id, user, got)
            assert await raw.closed_by_broker(5)
            raw.close()
            await hears(victim, sender, topic, f"after {client_id} {user}".encode())
        assert victim.connections == 1  # never pushed off, never made deaf
        # its own user with an owned id is admitted
        raw = await Raw.open(broker.port)
        assert await raw.connect("probe", "robot-rover1", pw["robot-rover1"]) == 0
        raw.close()


def deaf_settings(broker: BrokerHandle, proxy: DeafProxy, user: str) -> MqttSettings:
    return MqttSettings(
        url=broker.creds.url_for(user, "127.0.0.1", proxy.port),
        keepalive=KEEPALIVE,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )


async def test_deaf_link_reconnects_and_resubscribes(any_broker: BrokerHandle) -> None:
    broker = any_broker
    topic = TOPICS.server_cmd
    warnings: list[float] = []
    warned = asyncio.Event()

    async def on_deaf(link: MqttLink, silent_s: float) -> None:
        warnings.append(silent_s)
        warned.set()

    async with DeafProxy("127.0.0.1", broker.port) as proxy:
        settings = deaf_settings(broker, proxy, "server")
        async with (
            listening(
                settings, topic, heartbeat_topic=TOPICS.heartbeat("ars-server"), on_deaf=on_deaf
            ) as link,
            MqttLink(broker.mqtt("operator"), client_id="sender") as sender,
        ):
            await sender.wait_connected(10)
            await hears(link, sender, topic, b"before")
            loop = asyncio.get_running_loop()
            deafened = loop.time()
            proxy.deafen()
            await sender.publish(topic, b"lost", qos=1)  # dropped: the link is deaf
            await asyncio.wait_for(warned.wait(), 10)
            noticed = loop.time() - deafened
            assert noticed < 2 * KEEPALIVE + 2.0, noticed  # two keepalives + reconnect time
            assert link.deaf_reconnects == 1 and link.connections == 2
            assert 1.5 * KEEPALIVE < warnings[0] < 2 * KEEPALIVE + 0.5
            assert proxy.dropped >= 1
            await hears(link, sender, topic, b"after")  # resubscribed on the new connection
            await asyncio.sleep(3 * KEEPALIVE)  # a healthy link is not mistaken for deaf
            assert link.deaf_reconnects == 1 and link.connections == 2


async def wait_event(link: MqttLink, source: str, since: float) -> Event:
    """The first warning event from ``source`` stamped after ``since`` (wall clock)."""
    async with asyncio.timeout(15):
        async for _topic, received in link.messages():
            event = Event.model_validate_json(received)
            if event.source.startswith(source) and event.level == "warning" and event.ts > since:
                return event
    raise AssertionError("unreachable")


async def test_server_agent_warns_when_deaf(broker: BrokerHandle, tmp_path: Path) -> None:
    from server_agent.agent import ServerAgent
    from simulator.sets import SimulatorSets
    from tests.helpers.server import server_settings

    async with DeafProxy("127.0.0.1", broker.port) as proxy:
        settings = server_settings(broker, tmp_path / "server").model_copy(
            update={"mqtt": deaf_settings(broker, proxy, "server")}
        )
        async with (
            MqttLink(
                broker.mqtt("operator"), client_id="obs", subscriptions=[(TOPICS.server_events, 1)]
            ) as observer,
            ServerAgent(settings, sets=SimulatorSets()) as server,
        ):
            await observer.wait_connected(10)
            await server.wait_connected(10)
            before, since = server.link.deaf_reconnects, time.time()
            proxy.deafen()
            event = await wait_event(observer, "server", since)
            assert "received nothing" in event.msg and "resubscribed" in event.msg
            assert server.link.deaf_reconnects > before


async def test_robot_agent_warns_when_deaf(broker: BrokerHandle, tmp_path: Path) -> None:
    from robot_agent.agent import RobotAgent
    from tests.helpers.robot import RID, robot_settings

    async with DeafProxy("127.0.0.1", broker.port) as proxy:
        settings = robot_settings(broker, tmp_path).model_copy(
            update={"mqtt": deaf_settings(broker, proxy, f"robot-{RID}")}
        )
        async with (
            MqttLink(
                broker.mqtt("operator"),
                client_id="obs",
                subscriptions=[(TOPICS.robot_events(RID), 1)],
            ) as observer,
            RobotAgent(settings) as robot,
        ):
            await observer.wait_connected(10)
            await robot.link.wait_connected(10)
            before, since = robot.link.deaf_reconnects, time.time()
            proxy.deafen()
            event = await wait_event(observer, f"robot:{RID}", since)
            assert "received nothing" in event.msg and "resubscribed" in event.msg
            assert robot.link.deaf_reconnects > before


async def test_web_warns_browsers_when_deaf(
    aiohttp_client: Any, broker: BrokerHandle, tmp_path: Path
) -> None:
    from tests.helpers.web import recv_type
    from web.app import create_app
    from web.state import STATE

    async with DeafProxy("127.0.0.1", broker.port) as proxy:
        app = create_app(Settings(mqtt=deaf_settings(broker, proxy, "operator"), web=WebSettings()))
        client = await aiohttp_client(app)
        relay = app[STATE].relay
        assert relay is not None
        await relay.link.wait_connected(10)
        ws = await client.ws_connect("/ws")
        await recv_type(ws, "hello")
        before, since = relay.link.deaf_reconnects, time.time()
        proxy.deafen()
        while True:  # (a warning from before deafen(), on a loaded machine, does not count)
            frame = await recv_type(ws, "web_event", timeout=15)
            if frame["event"]["ts"] > since:
                break
        assert frame["event"]["level"] == "warning" and frame["event"]["source"] == "web"
        assert "resubscribed" in frame["event"]["msg"]
        assert relay.link.deaf_reconnects > before
        await ws.close()


async def test_heartbeats_pass_each_users_acl(any_broker: BrokerHandle) -> None:
    """A robot's heartbeat is inside its ACL (publish and read), so a healthy link stays up."""
    broker = any_broker
    settings = broker.mqtt("robot-rover1").model_copy(update={"keepalive": KEEPALIVE})
    beat = TOPICS.robot_heartbeat("rover1")
    assert beat == "ars/robots/rover1/heartbeat"
    async with MqttLink(settings, client_id="ars-robot-rover1", heartbeat_topic=beat) as link:
        await link.wait_connected(10)
        await asyncio.sleep(3 * KEEPALIVE)
        assert link.deaf_reconnects == 0 and link.connections == 1
