"""Robot agent on the real embedded broker: segmentation, previews, candidates, command answers."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from PIL import Image

from common.images import encode_jpeg
from common.schemas import Event, PreviewHeader, RobotState
from robot_agent.agent import RobotAgent
from robot_agent.sources import CameraFrame
from tests.helpers.brokers import BrokerHandle
from tests.helpers.robot import (
    RID,
    Operator,
    noise,
    operator,
    preview_parts,
    robot_settings,
)


async def test_start_stop_segmentation_previews_and_candidates(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = robot_settings(broker, tmp_path)
    async with operator(broker) as op:
        async with RobotAgent(settings) as robot:
            await segment_and_check(op, robot)
        # graceful exit: the retained state says offline
        await op.wait(lambda: op.states()[-1].online is False, timeout=5)


async def segment_and_check(op: Operator, robot: RobotAgent) -> None:
    """Start, check previews, states and candidates, stop."""
    first = await op.wait(lambda: op.states())
    assert first[-1].online and not first[-1].segmenting
    assert first[-1].model is not None and first[-1].model.version == "base"

    ref = await op.send("start_segmentation")
    answer = await op.answer(ref)
    assert answer.kind == "done" and answer.cmd == "start_segmentation"
    kinds = [e.kind for e in op.events() if e.ref == ref]
    assert kinds == ["accepted", "done"]
    assert answer.source == f"robot:{RID}"

    await op.wait(lambda: len(op.of("preview")) >= 3)
    header, parts = preview_parts(op.of("preview")[-1])
    preview = PreviewHeader.model_validate(header)
    assert (preview.robot_id, preview.width, preview.height) == (RID, 80, 60)
    assert preview.model_version == "base" and preview.infer_ms > 0
    assert preview.frame_id.startswith("folder-frame")
    jpeg = Image.open(io.BytesIO(parts[0]))
    mask = Image.open(io.BytesIO(parts[1]))
    assert (jpeg.format, jpeg.size) == ("JPEG", (80, 60))
    assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (80, 60))
    assert int(np.asarray(mask).max()) < 19

    # a state while segmenting says so, with frames and candidates counted
    seg = await op.wait(
        lambda: [s for s in op.states() if s.segmenting and s.frames >= 2 and s.candidates]
    )
    assert seg[-1].fps > 0

    stop = await op.send("stop_segmentation")
    assert (await op.answer(stop)).kind == "done"
    processed = robot.worker.processed
    assert processed >= 3
    # every processed frame left one candidate with its crop (half x half of 160x120)
    assert robot.store.count == robot.frames >= processed - 1
    cand = robot.store.unsent()[0]
    assert cand.box[2:] == (80, 60) and cand.frame_size == (160, 120)
    crop, cmask = robot.store.read_parts(cand.region_id)
    assert Image.open(io.BytesIO(crop)).size == (80, 60)
    assert Image.open(io.BytesIO(cmask)).mode == "L"

    await asyncio.sleep(0.2)  # a preview published just before the answer may trail it
    previews = len(op.of("preview"))
    await asyncio.sleep(0.4)
    assert len(op.of("preview")) == previews
    last = RobotState.model_validate(op.of("state")[-1].json())
    assert not last.segmenting

    again = await op.send("stop_segmentation")
    rejected = await op.answer(again)
    assert rejected.kind == "rejected" and "not segmenting" in rejected.msg


async def test_unknown_and_invalid_commands_are_rejected_and_agent_keeps_working(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = robot_settings(broker, tmp_path)
    async with operator(broker) as op, RobotAgent(settings):
        await op.wait(lambda: op.states())
        ref = await op.send("fly_to_the_moon")
        answer = await op.answer(ref)
        assert answer.kind == "rejected" and "unknown command 'fly_to_the_moon'" in answer.msg

        # server commands are the server's: the robot stays silent
        server_ref = await op.send("start_annotation")
        # malformed JSON and a schema violation: one rejected answer each, naming the topic
        await op.publish("cmd", b"{not json")
        await op.publish("cmd", b'{"v":1,"cmd":"start_segmentation","id":"x1","extra":3}')
        await op.publish("cmd", b'{"v":2,"cmd":"start_segmentation","id":"x2"}')

        def invalid() -> list[Event]:
            return [e for e in op.events() if e.kind == "rejected" and e.level == "error"]

        await op.wait(lambda: len(invalid()) == 3)
        bad = invalid()
        assert all("ars/robots/rover1/cmd" in e.msg for e in bad)
        assert "invalid JSON" in bad[0].msg
        assert bad[1].ref == "x1" and "extra" in bad[1].msg
        assert bad[2].ref == "x2" and "schema version" in bad[2].msg

        # garbage on the other handlers: error events, nothing dies
        await op.publish("model/offer", b"\xff\x00garbage")
        await op.publish("model/chunk", b"ARSE\x00\x00\x00\x05{}")
        await op.publish("regions/ack", b'{"v":1}')
        await op.wait(lambda: len([e for e in op.events() if e.kind == "error"]) >= 3)
        errors = [e for e in op.events() if e.kind == "error"]
        topics = " ".join(e.msg for e in op.events() if e.kind == "error")
        for leaf in ("model/offer", "model/chunk", "regions/ack"):
            assert f"ars/robots/rover1/{leaf}" in topics
        assert all(e.level == "error" for e in errors)

        # still working: a plain mosquitto_pub-style command is obeyed
        await op.publish("cmd", b'{"v":1,"cmd":"start_segmentation","id":"go1"}')
        assert (await op.answer("go1")).kind == "done"
        await op.wait(lambda: op.of("preview"))
        # duplicate delivery of the same command id is answered once
        await op.publish("cmd", b'{"v":1,"cmd":"start_segmentation","id":"go1"}')
        await asyncio.sleep(0.3)
        assert [e.kind for e in op.events() if e.ref == "go1"] == ["accepted", "done"]
        assert not [e for e in op.events() if e.ref == server_ref]


class FloodSource:
    """A camera far faster than inference: a new frame every event-loop turn."""

    description = "test:flood"

    def __init__(self) -> None:
        self.produced = 0

    async def __aiter__(self) -> AsyncIterator[CameraFrame]:
        frames = [noise(120, 160, i) for i in range(4)]
        while True:
            await asyncio.sleep(0)
            self.produced += 1
            yield f"flood-i{self.produced}", frames[self.produced % 4]


async def test_latest_wins_under_load(broker: BrokerHandle, tmp_path: Path) -> None:
    settings = robot_settings(broker, tmp_path, preview_fps=0)
    source = FloodSource()
    async with operator(broker) as op, RobotAgent(settings, source=source) as robot:
        await op.wait(lambda: op.states())
        await op.answer(await op.send("start_segmentation"))
        await op.wait(lambda: robot.worker.processed >= 4)
        await op.answer(await op.send("stop_segmentation"))
        box = robot.mailbox
        # frames arrive much faster than they are processed; the waiting one is replaced
        assert source.produced > 3 * robot.worker.processed
        assert box.dropped >= source.produced - robot.worker.processed - 2
        assert box.put_count - box.dropped <= robot.worker.processed + 1
        assert not box.waiting
        assert not op.of("preview")  # preview_fps 0: none


async def test_mqtt_camera_source(broker: BrokerHandle, tmp_path: Path) -> None:
    """Frames published by another program on the robot's own subtree (the ACL allows that)."""
    settings = robot_settings(broker, tmp_path, source=f"mqtt:ars/robots/{RID}/camera")
    async with operator(broker) as op, RobotAgent(settings) as robot:
        await op.wait(lambda: op.states())
        await op.answer(await op.send("start_segmentation"))
        for i in range(3):
            await op.publish("camera", encode_jpeg(noise(120, 160, i)), qos=0)
            await op.wait(lambda i=i: robot.frames > i)  # type: ignore[misc]
        header, _ = preview_parts(op.of("preview")[-1])
        assert header["frame_id"].startswith("mqtt-i")
        assert robot.store.unsent()[0].frame_size == (160, 120)
        await op.publish("camera", b"not an image", qos=0)
        bad = await op.wait(lambda: [e for e in op.events() if "bad camera frame" in e.msg])
        assert bad[0].kind == "error"
        await op.publish("camera", encode_jpeg(noise(120, 160, 9)), qos=0)
        await op.wait(lambda: robot.frames > 3)  # still running
