"""Camera sources: each an async iterator of ``(frame_id, image HxWx3 uint8 RGB)``.

- ``sim:urban|rural|drive|route``: the simulator's ``Drive`` at ``robot.width x robot.height``,
  paced at ``robot.camera_fps`` (rendering runs in a thread so the loop never stalls).
- ``folder:PATH``: the images of a folder in sorted order, looping, paced at ``camera_fps``.
- ``mqtt:TOPIC``: JPEG/PNG frames published by another program, fed by the agent's dispatcher
  from its own MQTT link. The broker ACL lets ``robot-<rid>`` subscribe only under
  ``ars/robots/<rid>/``, so use e.g. ``mqtt:ars/robots/<rid>/camera`` (or run the robot as a
  user allowed to read the camera topic). A payload may also be an envelope whose header holds
  ``frame_id`` and whose first part is the image.
- ``video:PATH_OR_URL``: a video file, stream or V4L2 camera through PyAV
  (``robot_agent.video_source``).
- ``rosbag:PATH[:TOPIC]``: the images of a ROS 1 bag, ROS 2 bag or MCAP file through rosbags
  (``robot_agent.bag_source``).

A source that fails or ends reports an error through ``on_error`` and the agent keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from common.config import RobotSettings
from common.envelope import MAGIC, decode
from common.errors import ArsError, ConfigError, ProtocolError
from common.ids import check_id
from common.images import decode_rgb
from robot_agent.mailbox import LatestMailbox

logger = logging.getLogger(__name__)

CameraFrame = tuple[str, np.ndarray]
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"})


class FrameSource(Protocol):
    """What the agent reads frames from."""

    description: str

    def __aiter__(self) -> AsyncIterator[CameraFrame]: ...


class Pacer:
    """Ticks at ``fps``; a consumer that falls behind restarts the schedule (no catch-up burst)."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._next: float | None = None

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next is None or now - self._next > self.period:
            self._next = now
        delay = self._next - now
        if delay > 0:
            await asyncio.sleep(delay)
        self._next += self.period


class RecordedPacer:
    """Holds each frame until its recorded time, divided by ``rate``, has passed since the first.

    ``rate`` 0 never waits. A consumer more than ``MAX_LAG_S`` behind, a recording whose time
    goes backwards (a loop) or jumps ahead by more than ``MAX_GAP_S`` restarts the schedule at
    the frame, so there is no catch-up burst and no stall on a broken timestamp.
    """

    MAX_LAG_S = 0.5
    MAX_GAP_S = 10.0

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._anchor: tuple[float, float] | None = None

    def reset(self) -> None:
        self._anchor = None

    async def wait(self, t: float | None) -> None:
        """``t``: the frame's recorded time in seconds (None: unknown, no wait)."""
        if self.rate <= 0 or t is None:
            return
        now = asyncio.get_running_loop().time()
        if self._anchor is None:
            self._anchor = (now, t)
            return
        wall0, t0 = self._anchor
        delay = wall0 + (t - t0) / self.rate - now
        if t < t0 or delay < -self.MAX_LAG_S or delay > self.MAX_GAP_S:
            self._anchor = (now, t)
        elif delay > 0:
            await asyncio.sleep(delay)


async def park() -> None:
    """A source that has ended waits here (until the agent cancels it) instead of finishing,
    so the agent does not start it again: ended files stay ended, as an error event said."""
    await asyncio.Event().wait()


class SimSource:
    """The simulator's drive, frame by frame (deterministic per seed)."""

    def __init__(self, spec: str, settings: RobotSettings, start: int = 0) -> None:
        from simulator.drive import Drive  # numpy-only; imported here so folder robots skip it

        self.description = f"sim:{spec}"
        self.drive = Drive(
            spec,
            seed=settings.seed,
            width=settings.width,
            height=settings.height,
            switch_at=settings.switch_at,
        )
        self.fps = settings.camera_fps
        self.index = start

    async def __aiter__(self) -> AsyncIterator[CameraFrame]:
        pacer = Pacer(self.fps)
        while True:
            await pacer.wait()
            frame = await asyncio.to_thread(self.drive.frame, self.index)
            self.index += 1
            yield frame.frame_id, frame.image


def safe_stem(name: str) -> str:
    """A file stem turned into a safe id fragment ([A-Za-z0-9_.-], no '..', <= 80 chars)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).replace("..", "_")[:80]
    return stem or "img"


class FolderSource:
    """The images of a folder, sorted by name, looping forever."""

    def __init__(self, folder: Path, fps: float) -> None:
        self.description = f"folder:{folder}"
        self.folder = folder
        if not folder.is_dir():
            raise ConfigError(f"robot.source folder {folder} is not a directory")
        self.files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.files:
            raise ConfigError(f"robot.source folder {folder} holds no images")
        self.fps = fps
        self.index = 0

    def _read(self, path: Path) -> np.ndarray:
        return decode_rgb(path.read_bytes(), what=str(path))

    async def __aiter__(self) -> AsyncIterator[CameraFrame]:
        pacer = Pacer(self.fps)
        while True:
            await pacer.wait()
            path = self.files[self.index % len(self.files)]
            index = self.index
            self.index += 1
            try:
                image = await asyncio.to_thread(self._read, path)
            except (OSError, ProtocolError) as exc:
                logger.warning("camera folder: skipping %s: %s", path, exc)
                continue
            yield f"folder-{safe_stem(path.stem)}-i{index}", image


ErrorReporter = Callable[[str], Awaitable[None]]


class MqttSource:
    """Frames published on ``topic``; the agent feeds payloads in, the newest one wins."""

    def __init__(self, topic: str, on_error: ErrorReporter | None = None) -> None:
        if not topic or "#" in topic or "+" in topic:
            raise ConfigError(f"robot.source mqtt topic {topic!r} must be one concrete topic")
        self.description = f"mqtt:{topic}"
        self.topic = topic
        self.on_error = on_error
        self.mailbox: LatestMailbox[bytes] = LatestMailbox()
        self.index = 0

    def feed(self, payload: bytes) -> None:
        """Called by the agent's dispatcher for every message on ``topic``."""
        self.mailbox.put(payload)

    def _decode(self, payload: bytes, index: int) -> CameraFrame:
        frame_id = f"mqtt-i{index}"
        data = payload
        if payload[:4] == MAGIC:
            env = decode(payload)
            if not env.parts:
                raise ProtocolError("camera envelope has no image part")
            if "frame_id" in env.header:
                frame_id = check_id(env.header["frame_id"], "frame id")
            data = env.parts[0]
        return frame_id, decode_rgb(data, what=f"camera frame on {self.topic}")

    async def __aiter__(self) -> AsyncIterator[CameraFrame]:
        while True:
            payload = await self.mailbox.get()
            index = self.index
            self.index += 1
            try:
                frame = await asyncio.to_thread(self._decode, payload, index)
            except ArsError as exc:
                logger.warning("camera topic %s: bad frame: %s", self.topic, exc)
                if self.on_error is not None:
                    await self.on_error(f"bad camera frame on {self.topic}: {exc}")
                continue
            yield frame


def open_source(
    spec: str, settings: RobotSettings, on_error: ErrorReporter | None = None
) -> FrameSource:
    """Build the source named by ``spec`` (``robot.source``); ConfigError if it cannot be."""
    kind, _, rest = spec.partition(":")
    if kind == "sim" and rest in {"urban", "rural", "drive", "route"}:
        return SimSource(rest, settings)
    if kind == "folder" and rest:
        return FolderSource(Path(rest).expanduser(), settings.camera_fps)
    if kind == "mqtt" and rest:
        return MqttSource(rest, on_error)
    if kind == "video" and rest:
        from robot_agent.video_source import VideoSource  # PyAV loads only for video robots

        return VideoSource(rest, settings, on_error)
    if kind == "rosbag" and rest:
        from robot_agent.bag_source import BagSource  # rosbags loads only for bag robots

        return BagSource(rest, settings, on_error)
    raise ConfigError(
        f"robot.source {spec!r}: expected sim:urban|rural|drive|route, folder:PATH, mqtt:TOPIC, "
        "video:PATH_OR_URL or rosbag:PATH[:TOPIC]"
    )
