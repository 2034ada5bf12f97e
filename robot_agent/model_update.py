"""Receiving a model over MQTT, hot-swapping it, and rolling back.

offer (HMAC-checked when ``model_key`` is set) -> chunks, written to disk as they arrive with
a running SHA-256 (``ChunkFile``) -> size + SHA-256 -> ``verified`` -> read (weights_only) or,
for a delta offer, rebuild from the running model and check the rebuilt weights' SHA-256
(``models.delta``) -> build, dry inference (each in a thread, between two of the worker's
frames) -> persist current/previous -> swap between two frames -> ``active``. A delta whose
parent is not the running model, or whose rebuild misses the promised SHA-256, is answered
``need_full`` (the running model untouched) and the server sends the whole checkpoint.
Chunks that stop for ``resend_timeout`` with some missing make a ``receiving`` status listing
them, and the server resends those. Any failure answers ``rejected`` (the artifact is bad) or
``failed`` (the robot could not install it) with the reason; the running model is untouched
until the swap, which cannot fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.envelope import decode
from common.errors import ArsError, CommandRejected, ModelError, ProtocolError, TransferError
from common.hashing import digests_equal, hmac_sha256, sha256_bytes
from common.schemas import ChunkHeader, ModelOffer, ModelState, ModelStatus, parse_json, validate
from models.checkpoint import (
    CheckpointMeta,
    build_from,
    read_checkpoint,
    weights_checkpoint_bytes,
    weights_of,
)
from models.delta import DeltaError, apply_delta
from models.network import SegNet
from robot_agent.chunk_file import ChunkFile
from robot_agent.inference import LoadedModel, ModelSlot, dry_run
from robot_agent.model_store import ModelFiles

logger = logging.getLogger(__name__)

#: Status messages while chunks flow, at most this many per second.
STATUS_PER_SECOND = 4.0
#: Missing-chunk lists are capped so a status stays small; the rest follow in later rounds.
MAX_MISSING_LISTED = 1024
#: Resend rounds without any progress before the transfer is given up.
MAX_IDLE_ROUNDS = 10

StatusSink = Callable[[ModelStatus], Awaitable[None]]
EventSink = Callable[[str, str], Awaitable[None]]  # (level, message)
ChangeSink = Callable[[], Awaitable[None]]
#: Gives a built model its runtime (``robot_agent.runtime.Runtime.prepare``).
PrepareStep = Callable[[LoadedModel], Awaitable[LoadedModel]]


@dataclass
class _Receive:
    offer: ModelOffer
    assembler: ChunkFile
    last_progress: float
    last_status: float = 0.0
    idle_rounds: int = 0
    finishing: bool = False
    watchdog: asyncio.Task[None] | None = field(default=None, repr=False)


class ModelUpdater:
    """Receives offers and chunks, installs verified models, and rolls back on request."""

    def __init__(
        self,
        *,
        robot_id: str,
        slot: ModelSlot,
        files: ModelFiles,
        device: str,
        infer_hw: tuple[int, int],
        model_key: str | None,
        resend_timeout: float,
        max_payload_bytes: int,
        max_model_bytes: int = 512 * 1024 * 1024,
        status: StatusSink,
        event: EventSink,
        changed: ChangeSink,
        prepare: PrepareStep | None = None,
    ) -> None:
        self.robot_id = robot_id
        self.slot = slot
        self.files = files
        self.device = device
        self.infer_hw = infer_hw
        self.model_key = model_key
        self.resend_timeout = resend_timeout
        self.max_payload_bytes = max_payload_bytes
        self.max_model_bytes = max_model_bytes
        self._status = status
        self._event = event
        self._changed = changed
        self._prepare = prepare
        self._rx: _Receive | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.corrupt_chunks = 0
        # the model the last swap replaced: the next install builds into it (see build_from);
        # safe because no forward pass overlaps an install step (ModelSlot.between_frames)
        self._spare: SegNet | None = None

    @property
    def busy(self) -> bool:
        """A model is being installed or rolled back."""
        return self._lock.locked()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        async def wrapper() -> None:
            await coro

        task = asyncio.create_task(wrapper(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(
        self,
        version: str,
        state: ModelState,
        *,
        rx: _Receive | None = None,
        missing: list[int] | None = None,
        error: str | None = None,
    ) -> None:
        status = ModelStatus(
            robot_id=self.robot_id,
            version=version,
            state=state,
            received=rx.assembler.received if rx else 0,
            chunks=rx.assembler.chunks if rx else 0,
            missing=(missing or [])[:MAX_MISSING_LISTED],
            error=error,
        )
        await self._status(status)

    async def _refuse(self, offer: ModelOffer, state: ModelState, reason: str) -> None:
        logger.warning("robot %s: model %s %s: %s", self.robot_id, offer.version, state, reason)
        await self._send(offer.version, state, error=reason)
        await self._event("error", f"model {offer.version} {state}: {reason}")

    # --- offer ---------------------------------------------------------------------------------
    def _check_signature(self, offer: ModelOffer) -> str | None:
        if not self.model_key:
            return None
        if not offer.signature:
            return "unsigned offer refused (model_key is set)"
        expected = hmac_sha256(self.model_key.encode(), offer.signed_fields())
        if not digests_equal(expected, offer.signature):
            return "offer signature does not verify"
        return None

    async def on_offer(self, payload: bytes, topic: str) -> None:
        offer = parse_json(ModelOffer, payload, where=topic)
        if offer.robot_id != self.robot_id:
            raise ProtocolError(
                f"{topic}: offer for robot {offer.robot_id!r}, not {self.robot_id!r}"
            )
        rx = self._rx
        if rx is not None and rx.offer == offer:
            logger.debug("duplicate offer %s ignored", offer.version)
            return
        if (reason := self._check_signature(offer)) is not None:
            await self._refuse(offer, "rejected", reason)
            return
        if offer.bytes > self.max_model_bytes:
            await self._refuse(
                offer, "rejected", f"{offer.bytes} bytes exceeds the limit {self.max_model_bytes}"
            )
            return
        current = self.slot.current
        if digests_equal(offer.sha256, current.sha256) or (
            offer.weights_sha256 is not None
            and digests_equal(offer.weights_sha256, current.meta.weights_sha256)
        ):
            await self._send(offer.version, "active")
            await self._event("info", f"model {offer.version} is already the running model")
            return
        if offer.is_delta and (reason := self._lacks_parent(offer, current.meta)) is not None:
            if rx is not None and not rx.finishing:
                await self._abandon(rx, f"superseded by version {offer.version}")
            await self._need_full(offer, reason, "warning")
            return
        if rx is not None and not rx.finishing:
            await self._abandon(rx, f"superseded by version {offer.version}")
        try:
            assembler = await asyncio.to_thread(
                ChunkFile,
                self.files.incoming(offer.version, offer.encoding or "full"),
                total_bytes=offer.bytes,
                chunk_size=offer.chunk_size,
                chunks=offer.chunks,
                sha256=offer.sha256,
            )
        except TransferError as exc:
            await self._refuse(offer, "rejected", str(exc))
            return
        loop = asyncio.get_running_loop()
        new = _Receive(offer=offer, assembler=assembler, last_progress=loop.time())
        self._rx = new
        new.watchdog = self._spawn(self._watch(new), f"model-resend-{offer.version}")
        logger.info(
            "robot %s: receiving model %s (%d bytes, %d chunks)",
            self.robot_id, offer.version, offer.bytes, offer.chunks,
        )  # fmt: skip
        await self._send(offer.version, "receiving", rx=new)
        await self._event("info", f"receiving model {offer.version} ({offer.bytes} bytes)")

    @staticmethod
    def _lacks_parent(offer: ModelOffer, running: CheckpointMeta) -> str | None:
        """Why the running model cannot be this delta's parent, or None when it can."""
        if offer.parent_version != running.version:
            return f"the delta is from {offer.parent_version}, this robot runs {running.version}"
        if not digests_equal(offer.parent_sha256 or "", running.weights_sha256):
            return (
                f"the delta's parent {offer.parent_version} has other weights than the running "
                f"model ({(offer.parent_sha256 or '')[:12]}... vs {running.weights_sha256[:12]}...)"
            )
        return None

    async def _need_full(self, offer: ModelOffer, reason: str, level: str) -> None:
        logger.warning(
            "robot %s: model %s delta refused (%s); asking for the whole checkpoint",
            self.robot_id, offer.version, reason,
        )  # fmt: skip
        await self._send(offer.version, "need_full", error=reason)
        await self._event(
            level,
            f"model {offer.version}: delta refused: {reason}; asking for the whole checkpoint",
        )

    async def _abandon(self, rx: _Receive, reason: str) -> None:
        if rx.watchdog is not None and rx.watchdog is not asyncio.current_task():
            rx.watchdog.cancel()
        if self._rx is rx:
            self._rx = None
        await asyncio.to_thread(rx.assembler.discard)
        await self._send(rx.offer.version, "failed", rx=rx, error=reason)
        await self._event("error", f"model {rx.offer.version} failed: {reason}")

    # --- chunks --------------------------------------------------------------------------------
    async def on_chunk(self, payload: bytes, topic: str) -> None:
        env = decode(payload, max_bytes=self.max_payload_bytes)
        header = validate(ChunkHeader, env.header, where=topic)
        if len(env.parts) != 1:
            raise ProtocolError(f"{topic}: chunk envelope needs one part, has {len(env.parts)}")
        rx = self._rx
        if rx is None or rx.finishing or header.version != rx.offer.version:
            logger.debug("chunk %d of %s ignored (not receiving it)", header.index, header.version)
            return
        try:
            fresh = rx.assembler.add(header.index, env.parts[0], header.sha256)
        except TransferError as exc:
            self.corrupt_chunks += 1
            raise TransferError(f"{topic}: model {header.version}: {exc}; chunk dropped") from exc
        if not fresh:
            return
        loop = asyncio.get_running_loop()
        rx.last_progress = loop.time()
        rx.idle_rounds = 0
        if rx.assembler.complete:
            rx.finishing = True
            if rx.watchdog is not None:
                rx.watchdog.cancel()
            await self._send(rx.offer.version, "receiving", rx=rx)
            self._spawn(self._finish(rx), f"model-install-{rx.offer.version}")
        elif loop.time() - rx.last_status >= 1.0 / STATUS_PER_SECOND:
            rx.last_status = loop.time()
            await self._send(rx.offer.version, "receiving", rx=rx)

    async def _watch(self, rx: _Receive) -> None:
        """After ``resend_timeout`` without a new chunk, list the missing ones (repeatedly)."""
        loop = asyncio.get_running_loop()
        while self._rx is rx and not rx.finishing:
            wait = rx.last_progress + self.resend_timeout - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            rx.idle_rounds += 1
            if rx.idle_rounds > MAX_IDLE_ROUNDS:
                await self._abandon(
                    rx, f"transfer stalled: {len(rx.assembler.missing())} chunks never arrived"
                )
                return
            missing = rx.assembler.missing()
            logger.info(
                "robot %s: model %s missing %d chunks; asking for a resend",
                self.robot_id, rx.offer.version, len(missing),
            )  # fmt: skip
            await self._send(rx.offer.version, "receiving", rx=rx, missing=missing)
            rx.last_progress = loop.time()

    # --- install -------------------------------------------------------------------------------
    async def _finish(self, rx: _Receive) -> None:
        offer = rx.offer
        async with self._lock:
            if self._rx is rx:
                self._rx = None
            try:
                path = await asyncio.to_thread(rx.assembler.finish)
            except TransferError as exc:
                await asyncio.to_thread(rx.assembler.discard)
                await self._refuse(offer, "rejected", str(exc))
                return
            try:
                was = await self._install(rx, path)
            finally:  # removed before the outcome was sent; here too when _install raised
                await asyncio.to_thread(rx.assembler.discard)
        if was is not None:
            # said once the lock is free: an operator who reads "active" may roll back at once
            # (a rollback while the lock is held is refused as "a model is being installed")
            logger.info("robot %s: model %s active", self.robot_id, offer.version)
            await self._send(offer.version, "active", rx=rx)
            how = f", rebuilt from a {offer.bytes}-byte delta" if offer.is_delta else ""
            await self._event("info", f"model {offer.version} active (was {was}{how})")
            await self._changed()

    async def _install(self, rx: _Receive, path: Path) -> str | None:
        """Build, check and swap in the received model; the version it replaced, or None when
        it was refused (the refusal already sent)."""
        offer = rx.offer
        await self._send(offer.version, "verified", rx=rx)
        # each step that would stall a frame (GIL-bound reading, rebuilding and building, the
        # dry run) runs between two of the worker's frames: see ModelSlot
        between = self.slot.run_between_frames
        running = self.slot.current
        data: bytes | None = None
        try:
            if offer.is_delta:
                weights, meta = await asyncio.to_thread(
                    between, self._rebuild, offer, path, running
                )
            else:
                weights, meta = await asyncio.to_thread(
                    between, read_checkpoint, path, device=self.device
                )
            if meta.version != offer.version or meta.arch != offer.arch:
                raise ModelError(
                    f"checkpoint is {meta.arch} version {meta.version}, "
                    f"offer says {offer.arch} version {offer.version}"
                )
            if offer.is_delta:  # the robot's own checkpoint file of the rebuilt weights
                data = await asyncio.to_thread(between, weights_checkpoint_bytes, weights, meta)
            spare, self._spare = self._spare, None
            model = await asyncio.to_thread(between, build_from, weights, meta, self.device, spare)
            del weights
        except DeltaError as exc:
            await asyncio.to_thread(rx.assembler.discard)  # gone before the robot says so
            await self._need_full(offer, str(exc), "error")
            return None
        except ModelError as exc:
            await asyncio.to_thread(rx.assembler.discard)
            await self._refuse(offer, "rejected", str(exc))
            return None
        new = LoadedModel(
            model=model, meta=meta, sha256=offer.sha256 if data is None else sha256_bytes(data)
        )
        try:
            await asyncio.to_thread(between, dry_run, model, self.infer_hw, len(meta.classes))
            if self._prepare is not None:  # onnxruntime session: steps between frames too
                new = await self._prepare(new)
            if data is None:
                new = await asyncio.to_thread(self.files.install_file, path, new, running)
            else:
                new = await asyncio.to_thread(self.files.install, data, new, running)
        except (ArsError, RuntimeError, ValueError) as exc:
            await asyncio.to_thread(rx.assembler.discard)
            await self._refuse(offer, "failed", str(exc))
            return None
        await asyncio.to_thread(rx.assembler.discard)  # a delta's bytes: installed as current.pt
        self._spare = self.slot.swap(new).model
        return running.version

    def _rebuild(
        self, offer: ModelOffer, path: Path, running: LoadedModel
    ) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
        """Sync (worker thread): the new weights from the running model and the delta."""
        if (reason := self._lacks_parent(offer, running.meta)) is not None:
            raise DeltaError(reason)  # a rollback since the offer
        parent = weights_of(running.model, running.meta.dtype)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read the received delta: {exc}") from exc
        weights, meta = apply_delta(parent, running.meta, data)
        if not digests_equal(meta.weights_sha256, offer.weights_sha256 or ""):
            raise DeltaError("the delta rebuilds other weights than the offer names")
        return weights, meta

    # --- rollback ------------------------------------------------------------------------------
    def check_rollback(self) -> None:
        """CommandRejected when a rollback makes no sense now."""
        if self.busy:
            raise CommandRejected("a model is being installed; try again when it is active")
        if not self.files.has_previous():
            raise CommandRejected("no previous model to roll back to")

    async def rollback(self) -> tuple[str, str]:
        """Run the previous model; returns (from version, to version)."""
        async with self._lock:
            running = self.slot.current
            previous = await asyncio.to_thread(self.files.load_previous, self.device)
            if digests_equal(previous.sha256, running.sha256):
                raise CommandRejected("the previous model is the running one")
            await asyncio.to_thread(
                self.slot.run_between_frames,
                dry_run,
                previous.model,
                self.infer_hw,
                len(previous.meta.classes),
            )
            if self._prepare is not None:
                previous = await self._prepare(previous)
            installed = await asyncio.to_thread(self.files.rollback, previous, running)
            self._spare = self.slot.swap(installed).model
            await self._send(installed.version, "rolled_back")
            await self._changed()
            return running.version, installed.version
