"""Video and rosbag sources on recordings the tests write: frame count, order, ids, pixels,
pacing, loops, a stream that drops and reconnects, and clear errors for bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config import RobotSettings
from common.errors import ConfigError
from robot_agent.agent import RobotAgent
from robot_agent.bag_source import BagSource
from robot_agent.sources import CameraFrame, open_source
from robot_agent.video_source import VideoSource
from tests.helpers.brokers import BrokerHandle
from tests.helpers.recordings import (
    STEP_NS,
    T0_NS,
    compressed_message,
    image_message,
    picture,
    ros1_types,
    ros2_types,
    write_ros1_bag,
    write_ros2_bag,
    write_video,
)
from tests.helpers.robot import operator, robot_settings

N = 6
BAG_IDS = [f"bag-{T0_NS + i * STEP_NS}" for i in range(N)]


class Errors(list[str]):
    async def __call__(self, msg: str) -> None:
        self.append(msg)


async def take(frames: AsyncIterator[CameraFrame], n: int) -> list[CameraFrame]:
    return [await asyncio.wait_for(anext(frames), 10) for _ in range(n)]


async def ended(frames: AsyncIterator[CameraFrame], errors: Errors, what: str) -> None:
    """The source yields no more frames and has reported its end."""
    pending = asyncio.ensure_future(anext(frames))
    for _ in range(200):
        if any(what in e for e in errors):
            break
        await asyncio.sleep(0.02)
    assert any(what in e for e in errors), errors
    assert not pending.done()
    pending.cancel()


def fast(**kw: Any) -> RobotSettings:
    return RobotSettings(**{"rate": 0.0, **kw})


# --- video ----------------------------------------------------------------------------------


async def test_mp4_frames_in_order_with_ids_and_pixels_then_an_end_event(tmp_path: Path) -> None:
    pictures = [picture(i) for i in range(N)]
    path = tmp_path / "clip.mp4"
    write_video(path, pictures)  # H.264 4:2:0: lossy, flat colours survive within a few levels
    errors = Errors()
    source = open_source(f"video:{path}", fast(), errors)
    assert isinstance(source, VideoSource) and source.lossless
    frames = aiter(source)
    got = await take(frames, N)
    assert [f for f, _ in got] == [f"video-clip-i{i}" for i in range(N)]
    for (_, image), want in zip(got, pictures, strict=True):
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        assert np.abs(image.astype(int) - want).mean() < 3.0
    # frame i is closer to picture i than to any other: the order is the recorded one
    for i, (_, image) in enumerate(got):
        dists = [np.abs(image.astype(int) - p).mean() for p in pictures]
        assert int(np.argmin(dists)) == i
    await ended(frames, errors, f"ended after {N} frames")


async def test_lossless_mkv_pixels_exact_and_loop_continues_ids(tmp_path: Path) -> None:
    pictures = [picture(i) for i in range(3)]
    path = tmp_path / "lossless.mkv"
    write_video(path, pictures, codec="ffv1", pix_fmt="bgr0")
    errors = Errors()
    source = open_source(f"video:{path}", fast(loop=True), errors)
    got = await take(aiter(source), 7)
    assert [f for f, _ in got] == [f"video-lossless-i{i}" for i in range(7)]
    for i, (_, image) in enumerate(got):
        np.testing.assert_array_equal(image, pictures[i % 3])
    assert errors == []


async def test_video_paced_at_recorded_time_or_camera_fps(tmp_path: Path) -> None:
    path = tmp_path / "clip.webm"
    write_video(path, [picture(i) for i in range(5)], codec="libvpx-vp9", fps=10)
    for settings, least in [
        (RobotSettings(rate=1.0), 0.4),  # 5 frames at 10 fps: 0.4 s from the first to the last
        (RobotSettings(rate=2.0), 0.2),
        (RobotSettings(pace="fps", camera_fps=20.0), 0.2),
    ]:
        frames = aiter(open_source(f"video:{path}", settings))
        await anext(frames)
        start = time.monotonic()
        await take(frames, 4)
        took = time.monotonic() - start
        assert least * 0.9 <= took < least + 1.5, (settings, took)


async def test_corrupt_missing_and_streamless_videos_are_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(ConfigError, match=r"video:.*broken\.mp4.*cannot open"):
        open_source(f"video:{bad}", RobotSettings())
    with pytest.raises(ConfigError, match="no such file"):
        open_source(f"video:{tmp_path / 'nothing.mp4'}", RobotSettings())
    with pytest.raises(ConfigError, match="unsupported scheme 'ftp'"):
        open_source("video:ftp://example.invalid/x.mp4", RobotSettings())
    with pytest.raises(ConfigError, match="expected sim"):
        open_source("video:", RobotSettings())


async def test_stream_that_drops_reconnects_with_backoff(tmp_path: Path) -> None:
    """A real TCP stream (MPEG-TS) served twice then refused: frames, an event per drop,
    reconnection, growing delays, and the password never shown."""
    pictures = [picture(i) for i in range(4)]
    ts = tmp_path / "cam.ts"
    write_video(ts, pictures, codec="libx264", fmt="mpegts")
    payload = ts.read_bytes()
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        if served <= 2:
            writer.write(payload)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    errors = Errors()
    source = open_source(f"video:tcp://user:secret@127.0.0.1:{port}", RobotSettings(), errors)
    assert isinstance(source, VideoSource) and not source.lossless
    assert "secret" not in source.description
    frames = aiter(source)
    got = await take(frames, 8)  # two connections of 4 frames
    assert [f for f, _ in got] == [f"video-127.0.0.1_{port}-i{i}" for i in range(8)]
    for i, (_, image) in enumerate(got):
        assert np.abs(image.astype(int) - pictures[i % 4]).mean() < 3.0
    assert any("stream ended; reconnecting in 0.5 s" in e for e in errors), errors
    server.close()
    await server.wait_closed()
    pending = asyncio.ensure_future(anext(frames))
    for _ in range(300):
        if sum("reconnecting" in e for e in errors) >= 3:
            break
        await asyncio.sleep(0.02)
    delays = [e.rsplit("reconnecting in ", 1)[1] for e in errors if "reconnecting" in e]
    assert delays[:3] == ["0.5 s", "0.5 s", "1.0 s"], errors  # a frame resets the back-off
    assert all("secret" not in e for e in errors)
    pending.cancel()


# --- rosbags ---------------------------------------------------------------------------------


async def test_ros1_bag_rgb8_ids_are_the_bag_timestamps(tmp_path: Path) -> None:
    types = ros1_types()
    pictures = [picture(i, 40, 30) for i in range(N)]
    msgs = [image_message(types, True, 5, p, "rgb8") for p in pictures]  # ids: record times
    path = tmp_path / "run.bag"
    write_ros1_bag(path, {"/cam/image_raw": ("sensor_msgs/msg/Image", msgs)})
    errors = Errors()
    source = open_source(f"rosbag:{path}", fast(), errors)  # one image topic: inferred
    assert isinstance(source, BagSource) and source.topic == "/cam/image_raw"
    frames = aiter(source)
    got = await take(frames, N)
    assert [f for f, _ in got] == BAG_IDS
    for (_, image), want in zip(got, pictures, strict=True):
        np.testing.assert_array_equal(image, want)
    await ended(frames, errors, f"ended after {N} frames of /cam/image_raw")


async def test_ros2_bag_bgr8_and_mono8_topics_need_naming(tmp_path: Path) -> None:
    types = ros2_types()
    pictures = [picture(i, 40, 30) for i in range(N)]
    path = tmp_path / "ros2bag"
    write_ros2_bag(
        path,
        {
            "/front/image": (
                "sensor_msgs/msg/Image",
                [image_message(types, False, 0, p, "bgr8") for p in pictures],
            ),
            "/ir/image": (
                "sensor_msgs/msg/Image",
                [image_message(types, False, 0, p, "mono8") for p in pictures],
            ),
        },
    )
    with pytest.raises(ConfigError, match=r"name the topic.*/front/image, /ir/image"):
        open_source(f"rosbag:{path}", RobotSettings())
    with pytest.raises(ConfigError, match="no sensor_msgs/Image or CompressedImage topic '/x'"):
        open_source(f"rosbag:{path}:/x", RobotSettings())
    got = await take(aiter(open_source(f"rosbag:{path}:/front/image", fast())), N)
    assert [f for f, _ in got] == BAG_IDS
    for (_, image), want in zip(got, pictures, strict=True):
        np.testing.assert_array_equal(image, want)  # bgr8 came back as RGB
    got = await take(aiter(open_source(f"rosbag:{path}:/ir/image", fast())), N)
    for (_, image), want in zip(got, pictures, strict=True):
        np.testing.assert_array_equal(image, np.repeat(want[..., 1:2], 3, axis=2))


async def test_mcap_compressed_images_and_loop(tmp_path: Path) -> None:
    """rosbags writes MCAP itself (a ROS 2 bag with the MCAP storage plugin); the robot reads
    the bare .mcap file."""
    types = ros2_types()
    pictures = [picture(i, 40, 30) for i in range(3)]
    path = tmp_path / "mcapbag"
    msgs = [compressed_message(types, False, 0, p) for p in pictures]
    write_ros2_bag(path, {"/cam/compressed": ("sensor_msgs/msg/CompressedImage", msgs)}, mcap=True)
    (mcap,) = path.glob("*.mcap")
    errors = Errors()
    source = open_source(f"rosbag:{mcap}", fast(loop=True), errors)
    got = await take(aiter(source), 7)
    ids = [f"bag-{T0_NS + i * STEP_NS}" for i in range(3)]
    assert [f for f, _ in got] == [*ids, *(f"{i}-l1" for i in ids), f"{ids[0]}-l2"]
    for i, (_, image) in enumerate(got):
        np.testing.assert_array_equal(image, pictures[i % 3])
    assert errors == []


async def test_bag_paced_at_recorded_speed_times_rate(tmp_path: Path) -> None:
    types = ros1_types()
    msgs = [image_message(types, True, 0, picture(i, 16, 12), "rgb8") for i in range(5)]
    path = tmp_path / "paced.bag"
    write_ros1_bag(path, {"/cam": ("sensor_msgs/msg/Image", msgs)})
    for rate, least in [(1.0, 0.2), (0.5, 0.4)]:  # 4 steps of 50 ms
        frames = aiter(open_source(f"rosbag:{path}", RobotSettings(rate=rate)))
        await anext(frames)
        start = time.monotonic()
        await take(frames, 4)
        took = time.monotonic() - start
        assert least * 0.9 <= took < least + 1.5, (rate, took)


async def test_unknown_encoding_corrupt_and_empty_bags_are_refused(tmp_path: Path) -> None:
    types = ros2_types()
    path = tmp_path / "depth"
    msgs = [image_message(types, False, 0, picture(0, 8, 6), "16UC1")]
    write_ros2_bag(path, {"/depth": ("sensor_msgs/msg/Image", msgs)})
    with pytest.raises(ConfigError, match=r"encoding '16UC1' is not supported; expected rgb8"):
        open_source(f"rosbag:{path}", RobotSettings())
    bad = tmp_path / "broken.bag"
    bad.write_bytes(b"#ROSBAG V2.0\n" + bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match=r"rosbag:.*broken\.bag.*cannot read"):
        open_source(f"rosbag:{bad}", RobotSettings())
    with pytest.raises(ConfigError, match="no such file"):
        open_source(f"rosbag:{tmp_path / 'none.bag'}", RobotSettings())
    odd = tmp_path / "odometry.bag"
    text = ros1_types()["std_msgs/msg/String"](data="x")
    write_ros1_bag(odd, {"/odom": ("std_msgs/msg/String", [text])})
    with pytest.raises(ConfigError, match="image topics: none"):
        open_source(f"rosbag:{odd}", RobotSettings())


async def test_a_bad_message_mid_bag_is_an_event_and_skipped(tmp_path: Path) -> None:
    types = ros1_types()
    good = [image_message(types, True, 0, picture(i, 16, 12), "rgb8") for i in range(3)]
    short = image_message(types, True, 0, picture(1, 16, 12), "rgb8")
    short.data = short.data[:10]  # truncated pixels
    path = tmp_path / "mixed.bag"
    write_ros1_bag(path, {"/cam": ("sensor_msgs/msg/Image", [good[0], short, good[2]])})
    errors = Errors()
    frames = aiter(open_source(f"rosbag:{path}", fast(), errors))
    got = await take(frames, 2)
    assert [f for f, _ in got] == [BAG_IDS[0], BAG_IDS[2]]
    assert any("skipped a message" in e and "needs 576 bytes, has 10" in e for e in errors)


# --- the robot agent on a bag ------------------------------------------------------------------


async def test_robot_segments_every_bag_frame_at_rate_zero(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    """The whole agent on a ROS 1 bag at rate 0: every message becomes one candidate, in
    order, with the bag timestamps as frame ids (none dropped), then an end event."""
    types = ros1_types()
    pictures = [picture(i, 160, 120) for i in range(N)]
    msgs = [image_message(types, True, 0, p, "rgb8") for p in pictures]
    path = tmp_path / "drive.bag"
    write_ros1_bag(path, {"/cam/image_raw": ("sensor_msgs/msg/Image", msgs)})
    settings = robot_settings(broker, tmp_path, source=f"rosbag:{path}", rate=0.0)
    async with operator(broker) as op, RobotAgent(settings) as robot:
        assert robot.source.description == f"rosbag:{path}:/cam/image_raw"
        await op.wait(lambda: op.states())
        await op.answer(await op.send("start_segmentation"))
        await op.wait(lambda: [e for e in op.events() if "ended after 6 frames" in e.msg])
        await op.wait(lambda: robot.store.count == N or None)
        assert robot.mailbox.dropped == 0
        frame_ids = sorted(c.frame_id for c in robot.store.unsent())
        assert frame_ids == BAG_IDS
        state = await op.wait(lambda: [s for s in op.states() if s.frames == N])
        assert state[-1].source == f"rosbag:{path}:/cam/image_raw"
