"""``rosbag:PATH[:TOPIC]``: the camera images of a recorded bag (rosbags, no ROS install).

PATH is a ROS 1 bag (``.bag``), a ROS 2 bag (its directory, or one ``.db3``/``.mcap`` file) or
any MCAP file with ROS 2 messages. Read: ``sensor_msgs/Image`` in rgb8, bgr8 or mono8 and
``sensor_msgs/CompressedImage`` (JPEG, PNG). TOPIC may be left out when the bag has exactly
one image topic.

The bag is opened and its first image decoded when the source is built, so a missing or
corrupt bag, a missing topic or an unsupported encoding is a ConfigError naming the reason,
and the robot refuses to start. Later, a message that cannot be decoded is an error event and
is skipped; the bag's end is an error event and the source stays ended, unless ``robot.loop``.

Frame ids are the bag's receive timestamps in nanoseconds, ``bag-<ns>`` (``-l<k>`` added on
the k-th loop), so a region names the exact message it came from. Pacing: the timestamps times
``robot.rate`` (rate 0: as fast as the robot takes frames, none dropped), or ``camera_fps``
with ``robot.pace = "fps"``. Reading runs in a worker thread, one message per call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from common.config import RobotSettings
from common.errors import ConfigError, ProtocolError, SourceError
from common.images import MAX_PIXELS, decode_rgb
from robot_agent.sources import CameraFrame, ErrorReporter, Pacer, RecordedPacer, park

logger = logging.getLogger(__name__)

RAW = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = frozenset({RAW, COMPRESSED})
ENCODINGS = {"rgb8": 3, "bgr8": 3, "mono8": 1}


def parse_spec(rest: str) -> tuple[Path, str | None]:
    """``PATH[:TOPIC]`` -> (path, topic or None). A path that exists as written wins, so a
    path holding ':' works; else the part after the last ':' is the topic."""
    whole = Path(rest).expanduser()
    if whole.exists():
        return whole, None
    path, sep, topic = rest.rpartition(":")
    if sep and path and topic:
        return Path(path).expanduser(), topic
    return whole, None


def image_from_message(msg: Any, msgtype: str, where: str) -> np.ndarray:
    """A deserialised Image or CompressedImage -> HxWx3 uint8 RGB; ProtocolError if unusable."""
    if msgtype == COMPRESSED:
        fmt = str(getattr(msg, "format", ""))
        return decode_rgb(bytes(msg.data), what=f"CompressedImage ({fmt!r}) on {where}")
    encoding = str(msg.encoding)
    channels = ENCODINGS.get(encoding.lower())
    if channels is None:
        raise ProtocolError(
            f"{where}: image encoding {encoding!r} is not supported; expected rgb8, bgr8, "
            "mono8 or a sensor_msgs/CompressedImage"
        )
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if h <= 0 or w <= 0 or h * w > MAX_PIXELS:
        raise ProtocolError(f"{where}: image size {w}x{h} is out of range")
    if step < w * channels or data.size < h * step:
        raise ProtocolError(
            f"{where}: {encoding} image {w}x{h} with step {step} needs {h * step} bytes, "
            f"has {data.size}"
        )
    image = data[: h * step].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif encoding.lower() == "bgr8":
        image = image[..., ::-1]
    return np.ascontiguousarray(image)


class BagReader:
    """One opened bag, reading one image topic (blocking; call from a worker thread).

    rosbags raises many types for a damaged file (its ReaderErrors, struct, zstd, KeyError):
    each becomes a SourceError at this boundary."""

    def __init__(self, path: Path, topic: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        if not path.exists():
            raise SourceError(f"rosbag {path}: no such file or directory")
        try:
            self.reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            self.reader.open()
        except Exception as exc:
            raise SourceError(f"rosbag {path}: cannot read ({exc})") from exc
        images = sorted({c.topic for c in self.reader.connections if c.msgtype in IMAGE_TYPES})
        if topic is None:
            if len(images) != 1:
                self.close()
                found = ", ".join(images) or "none"
                raise SourceError(
                    f"rosbag {path}: name the topic (rosbag:PATH:TOPIC); image topics: {found}"
                )
            topic = images[0]
        elif topic not in images:
            self.close()
            raise SourceError(
                f"rosbag {path}: no sensor_msgs/Image or CompressedImage topic {topic!r}; "
                f"image topics: {', '.join(images) or 'none'}"
            )
        self.topic = topic
        conns = [c for c in self.reader.connections if c.topic == topic]
        self._messages: Iterator[tuple[Any, int, bytes]] = self.reader.messages(connections=conns)
        self._closed = False

    def read(self) -> tuple[int, np.ndarray | ProtocolError] | None:
        """The next message: (timestamp ns, RGB image, or the reason it is unusable); None at
        the end. SourceError when the bag itself cannot be read further."""
        with self._lock:
            if self._closed:
                return None
            try:
                conn, stamp, raw = next(self._messages)
                msg = self.reader.deserialize(raw, conn.msgtype)
            except StopIteration:
                return None
            except Exception as exc:
                raise SourceError(f"rosbag {self.path}: read failed ({exc})") from exc
        try:
            return stamp, image_from_message(msg, conn.msgtype, f"{self.topic} at {stamp}")
        except ProtocolError as exc:
            return stamp, exc

    def close(self) -> None:
        with self._lock:
            if not getattr(self, "_closed", False):
                self._closed = True
                self.reader.close()


class BagSource:
    """The images of one topic of a bag; see the module docstring for the rules."""

    def __init__(
        self, rest: str, settings: RobotSettings, on_error: ErrorReporter | None = None
    ) -> None:
        self.path, topic = parse_spec(rest)
        self.on_error = on_error
        self.pace = settings.pace
        self.rate = settings.rate
        self.fps = settings.camera_fps
        self.loop = settings.loop
        self.lossless = self.pace == "recorded" and self.rate == 0
        try:  # refuse a bad bag, topic or encoding up front, with the reason
            reader = BagReader(self.path, topic)
        except SourceError as exc:
            raise ConfigError(f"robot.source rosbag:{rest}: {exc}") from exc
        try:
            first = reader.read()
        except SourceError as exc:
            raise ConfigError(f"robot.source rosbag:{rest}: {exc}") from exc
        finally:
            reader.close()
        if first is None:
            raise ConfigError(f"robot.source rosbag:{rest}: topic {reader.topic} has no message")
        if isinstance(first[1], ProtocolError):
            raise ConfigError(f"robot.source rosbag:{rest}: {first[1]}")
        self.topic = reader.topic
        self.description = f"rosbag:{self.path}:{self.topic}"

    async def _report(self, msg: str) -> None:
        logger.warning("camera %s: %s", self.description, msg)
        if self.on_error is not None:
            await self.on_error(msg)

    async def __aiter__(self) -> AsyncIterator[CameraFrame]:
        fps_pacer = Pacer(self.fps) if self.pace == "fps" else None
        recorded = RecordedPacer(self.rate)
        lap = 0
        while True:
            count, failure = 0, None
            try:
                reader = await asyncio.to_thread(BagReader, self.path, self.topic)
            except SourceError as exc:
                reader, failure = None, str(exc)
            if reader is not None:
                recorded.reset()
                try:
                    while (item := await asyncio.to_thread(reader.read)) is not None:
                        stamp, image = item
                        if isinstance(image, ProtocolError):
                            await self._report(f"skipped a message: {image}")
                            continue
                        count += 1
                        if fps_pacer is not None:
                            await fps_pacer.wait()
                        else:
                            await recorded.wait(stamp / 1e9)
                        yield (f"bag-{stamp}" if lap == 0 else f"bag-{stamp}-l{lap}"), image
                except SourceError as exc:
                    failure = str(exc)
                finally:
                    await asyncio.to_thread(reader.close)
            if failure is not None:
                await self._report(failure)
            if self.loop and count > 0:
                lap += 1
                continue
            await self._report(
                f"rosbag {self.path} ended after {count} frames of {self.topic}"
                + ("" if self.loop else " (robot.loop is off)")
            )
            await park()
