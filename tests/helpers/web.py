"""Helpers for the web tests: an app wired to the test broker, a stand-in server responder."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import numpy as np
from aiohttp.test_utils import TestClient
from PIL import Image

from common import envelope
from common.config import Settings, WebSettings
from common.mqtt import MqttLink
from common.schemas import Command, Reply
from common.topics import Topics
from tests.helpers.brokers import BrokerHandle
from web.app import create_app
from web.state import STATE

TOPICS = Topics("ars")


def web_settings(broker: BrokerHandle, **web: Any) -> Settings:
    return Settings(mqtt=broker.mqtt("operator"), web=WebSettings(**web))


async def start_client(
    aiohttp_client: Callable[..., Any], broker: BrokerHandle, **web: Any
) -> TestClient[Any, Any]:
    """The web app on a test server, its MQTT relay connected to the broker."""
    app = create_app(web_settings(broker, **web))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    relay = app[STATE].relay
    assert relay is not None
    await relay.link.wait_connected(10)
    return client


async def recv_type(
    ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Skip messages until one of ``type == kind`` arrives."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - loop.time()))
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data["type"] == kind:
                return dict(data)
        elif msg.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"socket ended while waiting for {kind}: {msg}")


async def recv_binary(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - loop.time()))
        if msg.type == aiohttp.WSMsgType.BINARY:
            return bytes(msg.data)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket ended while waiting for a binary frame: {msg}")


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class FakeServer:
    """Answers requests on ars/server/cmd the way the server agent does (for the relay's sake)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], list[bytes]]] = []
        self.crop = np.full((40, 60, 3), 90, np.uint8)
        self.pred = np.zeros((40, 60), np.uint8)

    async def handle(self, link: MqttLink, payload: bytes) -> None:
        if payload.startswith(envelope.MAGIC):
            env = envelope.decode(payload)
            cmd, ref, reply_to = env.header["cmd"], env.header["id"], env.header["reply_to"]
            args, parts = env.header.get("args", {}), env.parts
        else:
            command = Command.model_validate_json(payload)
            cmd, ref, reply_to, args, parts = (
                command.cmd,
                command.id,
                command.reply_to,
                command.args,
                [],
            )
        self.requests.append((cmd, args, parts))
        assert reply_to is not None
        if cmd == "list_regions":
            regions = [{"region_id": "reg-a", "score": 0.9}, {"region_id": "reg-b", "score": 0.4}]
            answer: bytes = Reply(ref=ref, ok=True, data={"regions": regions}).to_json()
        elif cmd == "get_region":
            if args.get("region_id") != "reg-a":
                answer = Reply(ref=ref, ok=False, error="unknown region").to_json()
            else:
                header = {
                    **Reply(ref=ref, ok=True).model_dump(mode="json"),
                    "region": {"region_id": "reg-a", "box": [0, 0, 60, 40]},
                    "annotated": False,
                }
                answer = envelope.encode(header, [png(self.crop), png(self.pred), b""])
        elif cmd == "submit_annotation" and args.get("skip") is True and not parts:
            answer = Reply(ref=ref, ok=True, data={"skipped": True}).to_json()
        elif cmd == "submit_annotation":
            mask = np.asarray(Image.open(io.BytesIO(parts[0])))
            ok = Image.open(io.BytesIO(parts[0])).mode == "L" and mask.shape == self.pred.shape
            answer = Reply(ref=ref, ok=ok, error=None if ok else "bad mask").to_json()
        else:
            answer = Reply(ref=ref, ok=False, error=f"unknown request {cmd}").to_json()
        await link.publish(reply_to, answer, qos=1)


@contextlib.asynccontextmanager
async def fake_server(broker: BrokerHandle) -> AsyncIterator[FakeServer]:
    server = FakeServer()
    link = MqttLink(
        broker.mqtt("server"), client_id="fake-server", subscriptions=[(TOPICS.server_cmd, 1)]
    )
    async with link:
        await link.wait_connected(10)

        async def pump() -> None:
            async for _, payload in link.messages():
                await server.handle(link, payload)

        task = asyncio.create_task(pump())
        try:
            yield server
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def listener(broker: BrokerHandle, topic: str) -> AsyncIterator[MqttLink]:
    link = MqttLink(broker.mqtt("server"), client_id="test-listener", subscriptions=[(topic, 1)])
    async with link:
        await link.wait_connected(10)
        yield link
