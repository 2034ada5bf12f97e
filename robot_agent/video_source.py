"""``video:PATH_OR_URL``: frames of a video file, a network stream or a V4L2 camera (PyAV).

- A file (mp4, mkv, webm, anything FFmpeg reads) is checked when the source is built: a
  missing or unreadable file is a ConfigError, so the robot refuses to start with the reason.
  It plays at its own timestamps times ``robot.rate`` (``pace = "recorded"``; rate 0: as fast
  as the robot takes frames, none dropped) or at ``robot.camera_fps`` (``pace = "fps"``), and
  starts again at its end when ``robot.loop`` is set. Otherwise its end is an error event and
  the source stays ended (the agent keeps running).
- A stream (``rtsp://``, ``http(s)://``, ``rtmp://``, ``udp://``, ``tcp://``, ``srt://``) or
  a camera (``/dev/video0``, opened with FFmpeg's ``v4l2`` demuxer) is paced by its sender; a
  failure to open, a read error or an end is an error event, then it reconnects with back-off
  (0.5 s doubling to 30 s, back to 0.5 s after a frame arrives).

Frame ids: ``video-<name>-i<n>``, ``n`` counting frames across loops and reconnects. Decoding
runs in a worker thread, one frame per call, so the event loop never waits on FFmpeg.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from common.config import RobotSettings
from common.errors import ConfigError, SourceError
from robot_agent.sources import (
    CameraFrame,
    ErrorReporter,
    Pacer,
    RecordedPacer,
    park,
    safe_stem,
)

logger = logging.getLogger(__name__)

STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"})
OPEN_TIMEOUT_S = 10.0  # open and read timeout for streams: a dead host is an error, not a hang
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class VideoTarget:
    """What ``video:...`` names: FFmpeg's url, its demuxer (None: guess), whether it is live."""

    url: str
    fmt: str | None
    live: bool
    name: str
    shown: str  # the url without credentials, for state, logs and events


def parse_target(spec: str) -> VideoTarget:
    """``spec`` after ``video:`` -> a file, a stream url or a V4L2 device."""
    scheme, sep, rest = spec.partition("://")
    if sep and scheme.lower() in STREAM_SCHEMES:
        shown = f"{scheme}://{rest.rsplit('@', 1)[-1]}"  # never show user:password@
        host_path = rest.rsplit("@", 1)[-1]
        return VideoTarget(spec, None, True, safe_stem(host_path.replace("/", "_")), shown)
    if sep:
        raise ConfigError(
            f"robot.source video:{spec}: unsupported scheme {scheme!r}; expected a file, "
            f"/dev/videoN or one of {', '.join(sorted(STREAM_SCHEMES))}"
        )
    path = Path(spec).expanduser()
    if spec.startswith("/dev/"):
        return VideoTarget(str(path), "v4l2", True, safe_stem(path.name), str(path))
    if not path.is_file():
        raise ConfigError(f"robot.source video:{spec}: no such file")
    return VideoTarget(str(path), None, False, safe_stem(path.stem), str(path))


class Decoder:
    """One opened container (blocking; call from a worker thread). ``read`` and ``close`` share
    a lock, so closing never frees FFmpeg state under a read still running in another thread."""

    def __init__(self, target: VideoTarget) -> None:
        self.target = target
        self._lock = threading.Lock()
        options: dict[str, Any] = {}
        if target.live:
            options["timeout"] = OPEN_TIMEOUT_S
        if target.url.startswith(("rtsp://", "rtsps://")):
            options["options"] = {"rtsp_transport": "tcp"}  # no UDP packet loss on a LAN
        try:
            self.container: Any = av.open(target.url, format=target.fmt, **options)
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"video {target.shown}: cannot open ({self._clean(exc)})") from exc
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(f"video {target.shown}: has no video stream")
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        self._frames = self.container.decode(stream)
        self._closed = False

    def _clean(self, exc: Exception) -> str:
        """FFmpeg's message names the url: shown without its credentials."""
        return str(exc).replace(self.target.url, self.target.shown)

    def read(self) -> tuple[float | None, np.ndarray] | None:
        """The next frame's (time in seconds or None, HxWx3 uint8 RGB); None at the end."""
        with self._lock:
            if self._closed:
                return None
            try:
                frame = next(self._frames)
            except StopIteration:
                return None
            except (av.FFmpegError, OSError) as exc:
                why = self._clean(exc)
                raise SourceError(f"video {self.target.shown}: read failed ({why})") from exc
            image = frame.to_ndarray(format="rgb24")
            time = frame.time
            return (None if time is None else float(time)), image

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.container.close()


class VideoSource:
    """Frames of a video file, stream or camera; see the module docstring for the rules."""

    def __init__(
        self, spec: str, settings: RobotSettings, on_error: ErrorReporter | None = None
    ) -> None:
        self.target = parse_target(spec)
        self.description = f"video:{self.target.shown}"
        self.on_error = on_error
        self.pace = settings.pace
        self.rate = settings.rate
        self.fps = settings.camera_fps
        self.loop = settings.loop and not self.target.live
        # rate 0 on a file: the agent waits for each frame to be taken (none dropped)
        self.lossless = not self.target.live and self.pace == "recorded" and self.rate == 0
        self.index = 0
        if not self.target.live:  # a bad file is refused up front, with FFmpeg's reason
            try:
                Decoder(self.target).close()
            except SourceError as exc:
                raise ConfigError(f"robot.source {self.description}: {exc}") from exc

    async def _report(self, msg: str) -> None:
        logger.warning("camera %s: %s", self.description, msg)
        if self.on_error is not None:
            await self.on_error(msg)

    async def __aiter__(self) -> AsyncIterator[CameraFrame]:
        backoff = BACKOFF_MIN_S
        fps_pacer = Pacer(self.fps) if self.pace == "fps" else None
        recorded = RecordedPacer(0.0 if self.target.live else self.rate)
        while True:
            count, failure = 0, None
            try:
                decoder = await asyncio.to_thread(Decoder, self.target)
            except SourceError as exc:
                decoder, failure = None, str(exc)
            if decoder is not None:
                recorded.reset()
                try:
                    while (item := await asyncio.to_thread(decoder.read)) is not None:
                        t, image = item
                        count += 1
                        backoff = BACKOFF_MIN_S
                        if fps_pacer is not None:
                            await fps_pacer.wait()
                        else:
                            await recorded.wait(t)
                        index = self.index
                        self.index += 1
                        yield f"video-{self.target.name}-i{index}", image
                except SourceError as exc:
                    failure = str(exc)
                finally:
                    await asyncio.to_thread(decoder.close)
            if self.target.live:
                why = failure or f"video {self.target.shown}: stream ended"
                await self._report(f"{why}; reconnecting in {backoff:.1f} s")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if failure is not None:
                await self._report(failure)
            if self.loop and count > 0:
                continue
            await self._report(
                f"video {self.target.shown} ended after {count} frames"
                + ("" if self.loop else " (robot.loop is off)")
            )
            await park()
