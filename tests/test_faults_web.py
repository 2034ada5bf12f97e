"""Fault: the web process restarted while someone annotates (headless; the browser side is in
tests/test_ui_e2e.py).

``ars web`` runs as its own process on a fixed port with a real server agent behind the broker.
A mask is saved through the HTTP API, the web process is SIGKILLed and started again on the
same port: the saved mask is still served (it lives on the server, byte for byte the same
labels), a WebSocket client reconnects and gets the catch-up snapshot (server state), and a
mask drawn during the outage (kept by the client) is saved after the restart.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

from broker.embedded import free_port
from server_agent.agent import ServerAgent
from simulator.sets import SimulatorSets
from tests.helpers.brokers import BrokerHandle
from tests.helpers.faults import end, spawn_cli
from tests.helpers.server import make_region, server_settings, tiny_checkpoint
from tests.helpers.web import png

pytestmark = pytest.mark.slow


async def wait_http(url: str, timeout: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.2)


async def snapshot_has_server_state(ws_url: str) -> bool:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        for _ in range(50):
            msg = await ws.receive(timeout=20)
            if (
                msg.type == aiohttp.WSMsgType.TEXT
                and json.loads(msg.data)["type"] == "server_state"
            ):
                return True
    return False


async def test_web_restart_keeps_saved_masks_and_reconnects(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    base = tiny_checkpoint(tmp_path / "base.pt")
    ss = server_settings(broker, tmp_path / "server", base_model=base)
    port = free_port()
    http = f"http://127.0.0.1:{port}"
    argv = ["web", "--data-dir", str(tmp_path / "web"), "--port", str(port)]
    env = {"ARS_MQTT__URL": broker.url("operator")}
    header, crop, pred = make_region(region_id="reg-1")
    h, w = header.box[3], header.box[2]
    saved = np.zeros((h, w), np.uint8)
    saved[: h // 2] = 8
    drawing = np.full((h, w), 255, np.uint8)
    drawing[:, : w // 2] = 0
    async with ServerAgent(ss, sets=SimulatorSets(), base_checkpoint=base) as server:
        await server.wait_connected()
        await asyncio.to_thread(server.store.add_region, header, crop, pred)
        web = await spawn_cli(argv, tmp_path / "web.log", env)
        try:
            await wait_http(f"{http}/healthz")
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{http}/api/regions/reg-1/annotation", data=png(saved)) as resp,
            ):
                assert resp.status == 200, await resp.text()
            web.send_signal(signal.SIGKILL)
            await web.wait()
        finally:
            await end(web)
        web = await spawn_cli(argv, tmp_path / "web.log", env)
        try:
            await wait_http(f"{http}/healthz")
            assert await snapshot_has_server_state(f"ws://127.0.0.1:{port}/ws")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{http}/api/regions/reg-1/annotation.png") as resp:
                    assert resp.status == 200
                    served = np.asarray(Image.open(io.BytesIO(await resp.read())))
                assert np.array_equal(served, saved)
                async with session.post(
                    f"{http}/api/regions/reg-1/annotation", data=png(drawing)
                ) as resp:
                    assert resp.status == 200 and (await resp.json())["ok"] is True
                async with session.get(f"{http}/api/regions/reg-1/annotation.png") as resp:
                    served = np.asarray(Image.open(io.BytesIO(await resp.read())))
                assert np.array_equal(served, drawing)
        finally:
            await end(web)
        assert server.store.counts() == (1, 1)
