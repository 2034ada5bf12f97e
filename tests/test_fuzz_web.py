"""Bad input on the web app: its WebSocket and its HTTP endpoints (the editor API).

The app runs with its MQTT relay on a real broker and a stand-in server (tests/helpers/web.py).
Hypothesis draws WebSocket messages by mutating valid ones (commands, requests, select, ping)
and adds the shared corpus as text and binary frames; every bad one is answered with an
``error`` (or a reply with ``ok: false``) and the socket stays open. HTTP: region ids with path
separators, ``..`` and encodings of them, masks that are not images, decompression bombs,
colour pixels, unknown classes, oversize bodies: each gets a 4xx with a reason, never a 500,
and the stand-in server receives only masks that validated.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import numpy as np
import pytest
from hypothesis import strategies as st

from tests.helpers.brokers import BrokerHandle
from tests.helpers.faults import bomb_png, corpus
from tests.helpers.web import fake_server, png, start_client
from tests.test_fuzz_handlers import TRIED, draw_many, json_payloads

WS_BASES: list[dict[str, Any]] = [
    {"type": "command", "id": "1", "robot_id": "rover1", "cmd": "start_segmentation", "args": {}},
    {"type": "request", "id": "2", "req": "get_region", "args": {"region_id": "reg-a"}},
    {"type": "request", "id": "3", "req": "list_regions", "args": {}},
    {"type": "select", "robot_id": "rover1"},
    {"type": "ping", "id": "4"},
]


async def answers(ws: aiohttp.ClientWebSocketResponse, n: int, timeout: float = 20.0) -> list[Any]:
    """The next ``n`` JSON messages that answer a browser message (error, reply, pong)."""
    got: list[Any] = []
    while len(got) < n:
        msg = await ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = json.loads(msg.data)
            if data["type"] in ("error", "reply", "pong"):
                got.append(data)
        elif msg.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"socket ended: {msg}")
    return got


async def test_websocket_refuses_bad_messages_and_stays_open(
    aiohttp_client: Any, broker: BrokerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    texts: list[str] = []
    for base in WS_BASES:
        texts += [p.decode("utf-8", "replace") for p in draw_many(json_payloads(base), 30)]
    texts += [p.decode("utf-8", "replace") for p in corpus().values() if len(p) < 100_000]
    async with fake_server(broker):
        client = await start_client(aiohttp_client, broker)
        async with client.ws_connect("/ws") as ws:
            refused = 0
            for i, text in enumerate([*texts, "\x00binary"]):
                if text == "\x00binary":  # not part of the browser protocol
                    await ws.send_bytes(b"\x00\x01garbage")
                else:
                    await ws.send_str(text)
                # a "select" has no answer: a ping after each message marks where its answer ends
                await ws.send_str(json.dumps({"type": "ping", "id": f"sync-{i}"}))
                while True:
                    data = (await answers(ws, 1))[0]
                    if data == {"type": "pong", "id": f"sync-{i}"}:
                        break
                    if data["type"] == "error":
                        assert data["error"], data
                        refused += 1
                    elif data.get("ok") is False:
                        assert data.get("error"), data
                        refused += 1
            assert not ws.closed
        resp = await client.get("/healthz")
        assert resp.status == 200
    TRIED["web websocket"] = len(texts) + 1
    assert refused >= len(texts) // 3
    with capsys.disabled():
        print(f"\nweb websocket: {len(texts) + 1} messages, {refused} refused with a reason")


def http_masks() -> dict[str, bytes]:
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0] = 3  # colour pixels (R != G)
    return {
        "empty": b"",
        "not an image": b"GIF89a not really",
        "truncated png": png(np.zeros((40, 60), np.uint8))[:40],
        "bomb": bomb_png(),
        "colour pixels": png(rgb),
        "unknown class": png(np.full((40, 60), 42, np.uint8)),
        "wrong size": png(np.zeros((7, 5), np.uint8)),
        "oversize": b"\x89PNG" + b"\0" * (2 * 1024 * 1024),
    }


BAD_IDS = ["..", "a..b", "%2e%2e", "a%2Fb", "-x", "x" * 200, "%00", "reg-a%20", ".hidden"]


async def test_http_endpoints_refuse_bad_input(
    aiohttp_client: Any, broker: BrokerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    tried = 0
    async with fake_server(broker) as server:
        client = await start_client(aiohttp_client, broker)
        for name, body in http_masks().items():
            resp = await client.post("/api/regions/reg-a/annotation", data=body)
            tried += 1
            assert 400 <= resp.status < 500, (name, resp.status)
            if name != "oversize" or resp.status != 413 or resp.content_type == "application/json":
                with_reason = await resp.text()
                assert with_reason, name
        for rid in BAD_IDS:
            for method, path in (
                ("GET", f"/api/regions/{rid}/crop.png"),
                ("POST", f"/api/regions/{rid}/annotation"),
                ("POST", f"/api/regions/{rid}/skip"),
            ):
                resp = await client.request(method, path, data=png(np.zeros((40, 60), np.uint8)))
                tried += 1
                assert 400 <= resp.status < 500, (method, path, resp.status)
        # what reached the stand-in server: only masks that validated (here: the wrong size,
        # which only the server can judge; it answered 422)
        submitted = [parts for cmd, _, parts in server.requests if cmd == "submit_annotation"]
        assert len(submitted) <= 1
        ok = await client.post(
            "/api/regions/reg-a/annotation", data=png(np.zeros((40, 60), np.uint8))
        )
        assert ok.status == 200 and (await ok.json())["ok"] is True
    TRIED["web http"] = tried
    with capsys.disabled():
        print(f"\nweb http: {tried} bad requests, each a 4xx with a reason; the app kept serving")


def test_strategies_draw_distinct_messages() -> None:
    drawn = draw_many(json_payloads(WS_BASES[0]), 20)
    assert len(set(drawn)) >= 10
    assert all(isinstance(p, bytes) for p in drawn)
    assert st is not None
