"""Web relay: latest-wins queues, the WebSocket protocol and the editor API on a real broker."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
from aiohttp import WSCloseCode, WSMsgType
from PIL import Image

from common import envelope
from common.classes import CLASS_NAMES, IGNORE, PALETTE
from common.mqtt import MqttLink
from common.schemas import Command, Event, PreviewHeader, RobotState, ServerState
from tests.helpers.web import (
    TOPICS,
    fake_server,
    listener,
    png,
    recv_binary,
    recv_type,
    start_client,
)
from web.queue import LatestWinsQueue, QueueClosed
from web.regions import browser_mask_to_png


# --- the queue (unit) ---------------------------------------------------------------------------
def test_keyed_items_coalesce_latest_wins() -> None:
    q = LatestWinsQueue(maxsize=8)
    for i in range(10):
        q.put(b"preview-%d" % i, key=("preview", "rover1"))
    q.put('{"type":"robot_event"}')
    q.put(b"other-robot", key=("preview", "rover2"))
    assert len(q) == 3
    assert q.dropped == 9
    assert [q.get_nowait() for _ in range(3)] == [
        b"preview-9",
        '{"type":"robot_event"}',
        b"other-robot",
    ]
    assert q.get_nowait() is None


def test_overflow_drops_oldest_keyless_first() -> None:
    q = LatestWinsQueue(maxsize=4)
    q.put("state", key="state")
    for i in range(6):
        q.put(f"event-{i}")
    assert len(q) == 4 and q.dropped == 3
    assert [q.get_nowait() for _ in range(4)] == ["state", "event-3", "event-4", "event-5"]


async def test_slow_client_gets_only_the_newest_preview() -> None:
    """A consumer slower than the producer sees few frames, always the newest, never a backlog."""
    q = LatestWinsQueue(maxsize=8)
    seen: list[bytes] = []

    async def slow_consumer() -> None:
        with pytest.raises(QueueClosed):
            while True:
                item = await q.get()
                assert isinstance(item, bytes)
                seen.append(item)
                await asyncio.sleep(0.05)

    consumer = asyncio.create_task(slow_consumer())
    for i in range(100):  # the producer never waits on the consumer
        q.put(b"%03d" % i, key="preview")
        if i % 10 == 9:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.12)
    q.close()
    await consumer
    assert len(q) == 0
    assert 2 <= len(seen) <= 10
    assert seen[-1] == b"099"
    assert seen == sorted(seen)
    assert q.dropped >= 100 - len(seen) - 1


# --- mask conversion (unit) ---------------------------------------------------------------------
def test_browser_mask_rgba_grey_becomes_mode_l() -> None:
    labels = np.array([[0, 1, 255], [18, 13, 8]], np.uint8)
    rgba = np.dstack([labels, labels, labels, np.full_like(labels, 255)])
    out, w, h = browser_mask_to_png(png(rgba))
    img = Image.open(io.BytesIO(out))
    assert (w, h) == (3, 2) and img.mode == "L"
    assert np.array_equal(np.asarray(img), labels)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (
            np.dstack(
                [np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8), np.zeros((4, 4), np.uint8)]
            ),
            "grey",
        ),
        (np.full((4, 4), 19, np.uint8), "unknown class ids [19]"),
    ],
)
def test_browser_mask_refused(array: np.ndarray, reason: str) -> None:
    from common.errors import ProtocolError

    with pytest.raises(ProtocolError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        browser_mask_to_png(png(array))


# --- WebSocket protocol against the broker ------------------------------------------------------
async def test_state_and_events_relayed_with_catch_up(aiohttp_client: Any, broker: Any) -> None:
    async with MqttLink(broker.mqtt("robot-rover1"), client_id="rover1") as robot:
        await robot.wait_connected(10)
        state = RobotState(robot_id="rover1", online=True, segmenting=True, fps=4.5, candidates=7)
        await robot.publish(TOPICS.robot_state("rover1"), state.to_json(), retain=True)
        client = await start_client(aiohttp_client, broker)
        await asyncio.sleep(0.3)  # the retained state reaches the relay before the browser joins
        ws = await client.ws_connect("/ws")
        hello = await recv_type(ws, "hello")
        assert "start_segmentation" in hello["commands"] and "rollback" in hello["commands"]
        classes = hello["classes"]  # the page draws with the server's class list, not its own
        assert classes["names"] == list(CLASS_NAMES) and classes["ignore"] == IGNORE
        assert classes["colours"] == PALETTE.tolist() and classes["colours"][13] == [0, 0, 142]
        snap = await recv_type(ws, "robot_state")  # catch-up snapshot
        assert snap["robot_id"] == "rover1" and snap["state"]["fps"] == 4.5
        assert snap["state"]["candidates"] == 7 and snap["state"]["segmenting"] is True

        event = Event(source="robot:rover1", kind="done", msg="ok", ref="abc", cmd="transfer_data")
        await robot.publish(TOPICS.robot_events("rover1"), event.to_json())
        got = await recv_type(ws, "robot_event")
        assert got["robot_id"] == "rover1"
        assert got["event"]["kind"] == "done" and got["event"]["ref"] == "abc"
        await ws.close()


async def test_server_state_and_preview_passthrough(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker)
    ws = await client.ws_connect("/ws")
    await recv_type(ws, "hello")
    async with MqttLink(broker.mqtt("server"), client_id="srv") as server:
        await server.wait_connected(10)
        await server.publish(TOPICS.server_state, ServerState(online=True, regions=3).to_json())
        got = await recv_type(ws, "server_state")
        assert got["state"]["online"] is True and got["state"]["regions"] == 3

    header = PreviewHeader(
        robot_id="rover1", frame_id="f-1", model_version="base", infer_ms=12.5, width=8, height=6
    )
    payload = envelope.encode(
        header.model_dump(mode="json"), [b"\xff\xd8jpeg", png(np.zeros((6, 8), np.uint8))]
    )
    async with MqttLink(broker.mqtt("robot-rover1"), client_id="rover1") as robot:
        await robot.wait_connected(10)
        await robot.publish(TOPICS.robot_preview("rover1"), payload, qos=0)
        assert await recv_binary(ws) == payload  # the envelope bytes, untouched
        # a malformed preview is dropped by the relay, never forwarded
        await robot.publish(TOPICS.robot_preview("rover1"), b"ARSE\x00\x00\x00\x02{}", qos=0)
        await robot.publish(TOPICS.robot_preview("rover1"), payload, qos=0)
        assert await recv_binary(ws) == payload
    await ws.close()


async def test_command_relayed_as_command_on_robot_topic(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker)
    async with listener(broker, TOPICS.robot_cmd("rover2")) as sub:
        ws = await client.ws_connect("/ws")
        await recv_type(ws, "hello")
        await ws.send_json(
            {"type": "command", "id": "b1", "robot_id": "rover2", "cmd": "start_finetune"}
        )
        reply = await recv_type(ws, "reply")
        assert reply["id"] == "b1" and reply["ok"] is True
        topic, payload = await asyncio.wait_for(anext(sub.messages()), 5)
        assert topic == "ars/robots/rover2/cmd"
        command = Command.model_validate_json(payload)
        assert command.cmd == "start_finetune" and command.id == reply["data"]["command_id"]
        await ws.close()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"type": "command", "robot_id": "rover1", "cmd": "format_disk"}, "not allowed"),
        ({"type": "command", "robot_id": "../rover1", "cmd": "rollback"}, "invalid robot id"),
        ({"type": "command", "robot_id": "rover1", "cmd": "rollback", "args": []}, "args"),
        ({"type": "request", "req": "submit_annotation"}, "not allowed"),
        ({"type": "shell", "cmd": "ls"}, "unknown message type"),
    ],
)
async def test_refused_messages_answer_error_and_publish_nothing(
    aiohttp_client: Any, broker: Any, message: dict[str, Any], error: str
) -> None:
    client = await start_client(aiohttp_client, broker)
    async with listener(broker, "ars/#") as sub:
        ws = await client.ws_connect("/ws")
        await recv_type(ws, "hello")
        await ws.send_json({**message, "id": "x1"})
        got = await recv_type(ws, "error")
        assert got["id"] == "x1" and error in got["error"]
        await ws.send_str("not json")
        assert "not JSON" in (await recv_type(ws, "error"))["error"]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(sub.messages()), 0.5)
        await ws.close()


async def test_request_answered_to_that_browser(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker)
    async with fake_server(broker) as server:
        ws = await client.ws_connect("/ws")
        other = await client.ws_connect("/ws")
        await recv_type(ws, "hello")
        await recv_type(other, "hello")
        await ws.send_json({"type": "request", "id": "r1", "req": "list_regions", "args": {}})
        reply = await recv_type(ws, "reply")
        assert reply["id"] == "r1" and reply["ok"] is True
        assert [r["region_id"] for r in reply["data"]["regions"]] == ["reg-a", "reg-b"]
        await ws.send_json(
            {"type": "request", "id": "r2", "req": "get_region", "args": {"region_id": "reg-a"}}
        )
        region = await recv_type(ws, "reply")
        assert region["id"] == "r2" and region["data"]["crop_url"] == "/api/regions/reg-a/crop.png"
        with pytest.raises(TimeoutError):  # the other browser does not see these replies
            await recv_type(other, "reply", timeout=0.3)
        assert [r[0] for r in server.requests] == ["list_regions", "get_region"]
        await ws.close()
        await other.close()


async def test_region_images_cached_and_validated(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker)
    async with fake_server(broker) as server:
        crop = await client.get("/api/regions/reg-a/crop.png")
        assert crop.status == 200 and crop.content_type == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(await crop.read()))), server.crop)
        pred = await client.get("/api/regions/reg-a/pred.png")
        assert pred.status == 200
        assert (await client.get("/api/regions/reg-a/annotation.png")).status == 404  # none yet
        assert len(server.requests) == 1  # one get_region served all three
        assert (await client.get("/api/regions/reg-zz/crop.png")).status == 404
        assert (await client.get("/api/regions/.hidden/crop.png")).status == 400
        assert (await client.get("/api/regions/reg-a/other.png")).status == 404


async def test_annotation_upload(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker, max_upload_bytes=64 * 1024)
    labels = np.full((40, 60), 255, np.uint8)
    labels[10:30, 5:50] = 13
    rgba = np.dstack([labels, labels, labels, np.full_like(labels, 255)])
    async with fake_server(broker) as server:
        resp = await client.post("/api/regions/reg-a/annotation", data=png(rgba))
        assert resp.status == 200 and (await resp.json())["ok"] is True
        cmd, args, parts = server.requests[-1]
        assert cmd == "submit_annotation" and args == {"region_id": "reg-a"}
        sent = Image.open(io.BytesIO(parts[0]))
        assert sent.mode == "L" and np.array_equal(np.asarray(sent), labels)

        colour = np.dstack([labels, labels // 2, labels])
        resp = await client.post("/api/regions/reg-a/annotation", data=png(colour))
        assert resp.status == 400 and "grey" in (await resp.json())["error"]
        noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
        resp = await client.post("/api/regions/reg-a/annotation", data=png(noise))
        assert resp.status == 413
        assert [r[0] for r in server.requests] == ["submit_annotation"]

        resp = await client.post("/api/regions/reg-b/skip")
        assert resp.status == 200 and (await resp.json())["data"] == {"skipped": True}
        assert server.requests[-1] == (
            "submit_annotation",
            {"region_id": "reg-b", "skip": True},
            [],
        )


async def test_ws_message_size_limit(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker, max_upload_bytes=2048)
    ws = await client.ws_connect("/ws")
    await recv_type(ws, "hello")
    await ws.send_str('{"type":"ping","pad":"' + "x" * 4096 + '"}')
    msg = await ws.receive(timeout=5)
    while msg.type == WSMsgType.TEXT:
        msg = await ws.receive(timeout=5)
    assert msg.type in {WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING}
    assert ws.close_code == WSCloseCode.MESSAGE_TOO_BIG


async def test_shutdown_closes_sockets_going_away(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker)
    ws = await client.ws_connect("/ws")
    await recv_type(ws, "hello")
    closing = asyncio.create_task(client.server.close())
    msg = await ws.receive(timeout=5)
    while msg.type == WSMsgType.TEXT:
        msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE and msg.data == WSCloseCode.GOING_AWAY
    await ws.close()
    await closing


async def test_new_browser_gets_the_running_jobs_loss_curve(
    aiohttp_client: Any, broker: Any
) -> None:
    client = await start_client(aiohttp_client, broker)
    first = await client.ws_connect("/ws")
    await recv_type(first, "hello")
    async with MqttLink(broker.mqtt("server"), client_id="srv") as server:
        await server.wait_connected(10)
        for i in range(1, 6):
            data = {"robot_id": "rover1", "job_id": "j7", "iteration": i, "iterations": 50}
            event = Event(source="server", kind="progress", msg="", data={**data, "loss": 2.0 / i})
            await server.publish(TOPICS.server_events, event.to_json())
        for _ in range(5):
            got = await recv_type(first, "server_event")
        assert got["event"]["data"]["iteration"] == 5
    late = await client.ws_connect("/ws")
    history = await recv_type(late, "finetune_history")
    assert history["job_id"] == "j7" and history["iterations"] == 50
    assert history["losses"] == [[i, 2.0 / i] for i in range(1, 6)]
    await first.close()
    await late.close()


def _preview(rid: str, frame_id: str) -> bytes:
    header = PreviewHeader(
        robot_id=rid, frame_id=frame_id, model_version="base", infer_ms=1.0, width=8, height=6
    )
    return envelope.encode(header.model_dump(mode="json"), [b"jpeg", b"png"])


async def test_browser_selects_one_robots_previews(aiohttp_client: Any, broker: Any) -> None:
    client = await start_client(aiohttp_client, broker)
    ws = await client.ws_connect("/ws")
    await recv_type(ws, "hello")
    await ws.send_json({"type": "select", "robot_id": "rover2"})
    await ws.send_json({"type": "ping", "id": "p"})
    await recv_type(ws, "pong")  # the selection is in place
    async with (
        MqttLink(broker.mqtt("robot-rover1"), client_id="rover1") as r1,
        MqttLink(broker.mqtt("robot-rover2"), client_id="rover2") as r2,
    ):
        await r1.wait_connected(10)
        await r2.wait_connected(10)
        await r1.publish(TOPICS.robot_preview("rover1"), _preview("rover1", "a"), qos=1)
        await r2.publish(TOPICS.robot_preview("rover2"), _preview("rover2", "b"), qos=1)
        await r1.publish(TOPICS.robot_preview("rover1"), _preview("rover1", "c"), qos=1)
        await r2.publish(TOPICS.robot_preview("rover2"), _preview("rover2", "d"), qos=1)
        got = [envelope.decode(await recv_binary(ws)).header["frame_id"] for _ in range(2)]
        assert got == ["b", "d"]
        await ws.send_json({"type": "select", "robot_id": "rover1"})  # sends its latest at once
        assert envelope.decode(await recv_binary(ws)).header["frame_id"] == "c"
    await ws.close()
