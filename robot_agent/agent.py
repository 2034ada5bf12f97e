"""The robot agent: camera, inference, candidate store, data transfer and model updates,
composed around one MQTT link and one dispatcher.

Tasks: the dispatcher (one handler per topic), the camera (pulls frames while segmenting into a
latest-wins mailbox), the inference worker, and a 1 s state heartbeat while segmenting.
Commands are answered by ``robot_agent.commands``; everything the robot says goes through its
outbox (``robot_agent.outbox``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
import torch

from common.config import Settings
from common.errors import ArsError, ProtocolError
from common.mqtt import MqttLink, deaf_message
from common.router import Router
from common.schemas import (
    ModelRef,
    RegionsAck,
    RobotState,
    parse_json,
)
from common.topics import Topics
from models.checkpoint import DEFAULT_CHECKPOINT
from robot_agent.candidates import CandidateStore, HardestOf
from robot_agent.commands import RobotCommands
from robot_agent.frames import preview_payload, region_parts
from robot_agent.inference import (
    FrameResult,
    InferenceWorker,
    ModelSlot,
    inference_threads,
    resolve_device,
)
from robot_agent.mailbox import LatestMailbox
from robot_agent.model_store import ModelFiles
from robot_agent.model_update import ModelUpdater
from robot_agent.outbox import RobotOutbox
from robot_agent.runtime import Runtime, default_cache
from robot_agent.sources import CameraFrame, FrameSource, MqttSource, open_source
from robot_agent.transfer import DataTransfer

logger = logging.getLogger(__name__)

STATE_INTERVAL_S = 1.0
#: A message handler: (payload, topic).
Handler = Callable[[bytes, str], Awaitable[None]]


class RobotAgent:
    """``async with RobotAgent(settings) as robot: ...``: runs until the block exits."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: FrameSource | None = None,
        ack_timeout: float = 15.0,
    ) -> None:
        self.settings = settings
        self.rs = settings.robot
        self.rid = settings.robot.id
        self.started = time.time()
        self.topics = Topics(settings.prefix)
        self.device = resolve_device(self.rs.device)
        self.segmenting = False
        self.fps = 0.0
        self.frames = 0
        self.mailbox: LatestMailbox[CameraFrame] = LatestMailbox()
        self._source_override = source
        self._ack_timeout = ack_timeout
        self._seg_on = asyncio.Event()
        self._stack = AsyncExitStack()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_preview = 0.0
        self._last_frame_t: float | None = None
        self._hardest: HardestOf[FrameResult] = HardestOf(
            settings.robot.store_every, lambda r: r.mining.score
        )
        #: Set once the start-up model has its runtime (at once for runtime torch and onnx;
        #: for auto, when the background switch to onnxruntime has succeeded or given up).
        self.runtime_ready = asyncio.Event()
        # set in __aenter__
        self.source: FrameSource
        self.store: CandidateStore
        self.slot: ModelSlot
        self.files: ModelFiles
        self.worker: InferenceWorker
        self.runtime: Runtime
        self.link: MqttLink
        self.transfer: DataTransfer
        self.updater: ModelUpdater
        self.outbox: RobotOutbox
        self.commands: RobotCommands

    # --- lifetime ------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        rs, data_dir = self.rs, self.settings.data_dir
        threads = inference_threads(rs.threads)
        torch.set_num_threads(threads)
        self.files = ModelFiles(data_dir / "models")
        fallback = rs.model or DEFAULT_CHECKPOINT
        loaded = await asyncio.to_thread(self.files.load_last_good, Path(fallback), self.device)
        self.runtime = Runtime(
            rs.runtime,
            cache=rs.onnx_cache or default_cache(os.environ),
            threads=threads,
            infer_hw=(rs.infer_height, rs.infer_width),
            device=self.device,
        )
        if rs.runtime == "onnx":  # required: a robot that cannot run it does not start
            loaded = await self.runtime.prepare(loaded)
        self.slot = ModelSlot(loaded)
        self.runtime.slot = self.slot  # from now on its steps take turns with the frames
        if rs.runtime != "auto":
            self.runtime_ready.set()
        self.store = await asyncio.to_thread(
            CandidateStore, data_dir / "candidates", rs.max_candidates
        )
        self._stack.callback(self.store.close)
        self.source = self._source_override or open_source(rs.source, rs, self._error)
        self.worker = InferenceWorker(
            self.slot,
            infer_size=(rs.infer_width, rs.infer_height),
            region_frac=rs.region_frac,
            window=rs.window,
        )
        t = self.topics
        subs = [
            (t.robot_cmd(self.rid), 1),
            (t.robot_regions_ack(self.rid), 1),
            (t.model_offer(self.rid), 1),
            (t.model_chunk(self.rid), 1),
        ]
        if isinstance(self.source, MqttSource):
            subs.append((self.source.topic, 0))
            own = t.robot_root(self.rid)
            if not self.source.topic.startswith(own):
                logger.warning(
                    "robot %s: camera topic %s is outside %s; the broker ACL lets robot-%s "
                    "read only there (use e.g. %scamera, or run as a user allowed to read it)",
                    self.rid, self.source.topic, own, self.rid, own,
                )  # fmt: skip
        will = aiomqtt.Will(
            t.robot_state(self.rid),
            RobotState(
                robot_id=self.rid,
                online=False,
                source=self.source.description,  # a stream url without its password
                started=self.started,
            ).to_json(),
            qos=1,
            retain=True,
        )
        self.link = MqttLink(
            self.settings.mqtt,
            client_id=f"ars-robot-{self.rid}",
            subscriptions=subs,
            will=will,
            on_connect=self._on_connect,
            max_inflight=16,
            heartbeat_topic=t.robot_heartbeat(self.rid),
            on_deaf=self._on_deaf,
        )
        self.outbox = RobotOutbox(self.link, t, self.rid, self._state)
        self.transfer = DataTransfer(
            link=self.link,
            topics=t,
            robot_id=self.rid,
            store=self.store,
            select_ratio=rs.select_ratio,
            select_rule=rs.selection,
            max_payload_bytes=self.settings.mqtt.max_payload_bytes,
            ack_timeout=self._ack_timeout,
        )
        self.updater = ModelUpdater(
            robot_id=self.rid,
            slot=self.slot,
            files=self.files,
            device=self.device,
            infer_hw=(rs.infer_height, rs.infer_width),
            model_key=self.settings.model_key,
            resend_timeout=self.settings.server.resend_timeout_s,
            max_payload_bytes=self.settings.mqtt.max_payload_bytes,
            status=self.outbox.status,
            event=self._updater_event,
            changed=self.publish_state,
            prepare=self.runtime.prepare,
        )
        self.commands = RobotCommands(
            self.outbox,
            segmentation=self,
            store=self.store,
            transfer=self.transfer,
            updater=self.updater,
            spawn=self.spawn,
        )
        await self._stack.enter_async_context(self.link)
        self._stack.push_async_callback(self._shutdown)
        self.spawn(self._dispatch(), "robot-dispatch")
        self.spawn(self._camera(), "robot-camera")
        self.spawn(self.worker.run(self.mailbox, self._on_result, self._error), "robot-infer")
        self.spawn(self._heartbeat(), "robot-heartbeat")
        if rs.runtime == "auto":
            self.spawn(self._switch_runtime(), "robot-runtime")
        logger.info(
            "robot %s up: source %s, model %s (%s), device %s",
            self.rid, self.source.description, loaded.version, loaded.meta.arch, self.device,
        )  # fmt: skip

    async def _switch_runtime(self) -> None:
        """Auto: the start-up model moves to onnxruntime once its graph is ready (the export
        runs in a child process; until then torch runs the frames)."""
        try:
            loaded = self.slot.current
            prepared = await self.runtime.prepare(loaded)
            # an install that swapped meanwhile prepared its own model: leave it
            if prepared.onnx is not None and self.slot.current is loaded:
                self.slot.swap(prepared)
                await self.outbox.event("info", f"model {loaded.version} runs on onnxruntime")
        finally:
            self.runtime_ready.set()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _shutdown(self) -> None:
        """Stop every task, then say goodbye (retained offline state) while the link is up."""
        self.segmenting = False
        self.slot.frames_flowing = False
        self._seg_on.clear()
        await self.updater.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.outbox.goodbye(self._state(online=False))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the agent keeps, and cancels on shutdown."""
        task = asyncio.create_task(coro, name=f"{name}-{self.rid}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "robot %s: task %s died", self.rid, task.get_name(), exc_info=task.exception()
            )

    # --- publishing ------------------------------------------------------------------------------
    def _state(self, *, online: bool = True) -> RobotState:
        prev = self.files.previous_info()
        prev_ref = None
        if prev is not None:
            with contextlib.suppress(Exception):
                prev_ref = ModelRef.model_validate(prev)
        return RobotState(
            robot_id=self.rid,
            online=online,
            segmenting=self.segmenting and online,
            source=self.source.description,
            model=self.slot.current.ref(),
            previous_model=prev_ref,
            fps=round(self.fps, 2) if self.segmenting else 0.0,
            frames=self.frames,
            candidates=self.store.count,
            unsent_candidates=self.store.unsent_count,
            bytes_sent=self.transfer.bytes_sent_total,
            started=self.started,
        )

    async def publish_state(self) -> None:
        await self.outbox.state()

    async def _on_connect(self, link: MqttLink) -> None:
        await self.publish_state()

    async def _on_deaf(self, link: MqttLink, silent_s: float) -> None:
        await self.outbox.event("info", deaf_message(silent_s), level="warning")

    async def _error(self, msg: str) -> None:
        await self.outbox.error(msg)

    async def _updater_event(self, level: str, msg: str) -> None:
        if level == "error":
            await self.outbox.error(msg)
        else:
            await self.outbox.event("info", msg)

    # --- camera and inference --------------------------------------------------------------------
    async def _camera(self) -> None:
        """Pull frames only while segmenting (the simulator costs CPU); newest frame wins,
        except for a lossless source (a recording played at rate 0), pulled only once the
        waiting frame is taken."""
        lossless = bool(getattr(self.source, "lossless", False))  # a recording at rate 0
        while True:
            frames = aiter(self.source)
            try:
                while True:
                    await self._seg_on.wait()
                    if lossless:
                        await self.mailbox.drained()
                    frame = await anext(frames)
                    if self.segmenting:
                        self.mailbox.put(frame)
            except Exception as exc:  # a broken camera must not end the agent
                logger.exception("robot %s: camera %s failed", self.rid, self.source.description)
                await self._error(f"camera {self.source.description} failed: {exc}")
                await asyncio.sleep(1.0)

    async def _on_result(self, result: FrameResult) -> None:
        loop = asyncio.get_running_loop()
        t = loop.time()
        if self._last_frame_t is not None:
            dt = max(t - self._last_frame_t, 1e-6)
            self.fps = 1.0 / dt if self.fps == 0 else 0.8 * self.fps + 0.2 / dt
        self._last_frame_t = t
        rs = self.rs
        want_preview = rs.preview_fps > 0 and t - self._last_preview >= 1.0 / rs.preview_fps
        if want_preview:
            self._last_preview = t
        stored = self._hardest.offer(result)  # one candidate per `robot.store_every` frames
        try:
            preview = await asyncio.to_thread(self._keep, stored, result if want_preview else None)
        except ArsError as exc:
            frame_id = stored.frame_id if stored is not None else result.frame_id
            logger.warning("robot %s: frame %s not stored: %s", self.rid, frame_id, exc)
            await self._error(f"frame {frame_id} not stored: {exc}")
            return
        self.frames += 1
        if preview is not None:
            await self.outbox.preview(preview)

    def _keep(self, stored: FrameResult | None, preview: FrameResult | None) -> bytes | None:
        """Blocking: store a frame's candidate and encode a frame's preview (either optional)."""
        if stored is not None:
            candidate, crop_png, mask_png = region_parts(stored)
            self.store.add(candidate, crop_png, mask_png)
        if preview is None:
            return None
        rs = self.rs
        return preview_payload(
            preview,
            robot_id=self.rid,
            width=rs.infer_width,
            height=rs.infer_height,
            quality=rs.preview_quality,
            fps=self.fps,
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL_S)
            if self.segmenting and self.link.connected.is_set():
                await self.publish_state()

    # --- dispatcher ------------------------------------------------------------------------------
    def routes(self) -> Router[Handler]:
        """One handler per topic the robot subscribes to."""
        t = self.topics
        router: Router[Handler] = Router()
        if isinstance(self.source, MqttSource):
            router.add(self.source.topic, self._feed)
        router.add(t.robot_cmd(self.rid), self.commands.on_payload)
        router.add(t.robot_regions_ack(self.rid), self._on_ack)
        router.add(t.model_offer(self.rid), self.updater.on_offer)
        router.add(t.model_chunk(self.rid), self.updater.on_chunk)
        return router

    async def _dispatch(self) -> None:
        router = self.routes()
        async for topic, payload in self.link.messages():
            found = router.match(topic)
            if found is None:
                logger.debug("robot %s: no handler for %s", self.rid, topic)
                continue
            handler, _ = found
            try:
                await handler(payload, topic)
            except ArsError as exc:
                logger.warning("robot %s: bad message on %s: %s", self.rid, topic, exc)
                await self._error(f"bad message on {topic}: {exc}")
            except Exception as exc:  # a handler bug must not kill the dispatcher
                logger.exception("robot %s: handler for %s failed", self.rid, topic)
                await self._error(f"handler for {topic} failed: {exc.__class__.__name__}: {exc}")

    async def _feed(self, payload: bytes, topic: str) -> None:
        """A camera frame from an MQTT source."""
        if isinstance(self.source, MqttSource):
            self.source.feed(payload)

    async def _on_ack(self, payload: bytes, topic: str) -> None:
        ack = parse_json(RegionsAck, payload, where=topic)
        if ack.robot_id != self.rid:
            raise ProtocolError(f"{topic}: ack for robot {ack.robot_id!r}")
        if not self.transfer.on_ack(ack):
            logger.info("robot %s: ack for transfer %s not awaited", self.rid, ack.transfer_id)

    # --- segmentation ----------------------------------------------------------------------------
    @property
    def source_description(self) -> str:
        return self.source.description

    async def begin_segmentation(self) -> None:
        self.segmenting = True
        self.slot.frames_flowing = True
        self.fps = 0.0
        self._last_frame_t = None
        self._last_preview = 0.0
        self._hardest.reset()
        self._seg_on.set()
        await self.publish_state()

    async def end_segmentation(self) -> None:
        """Stop taking frames; returns once the frame in flight (if any) is stored."""
        self.segmenting = False
        self.slot.frames_flowing = False
        self._seg_on.clear()
        self.mailbox.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.worker.idle.wait(), 10.0)
        await self.publish_state()
