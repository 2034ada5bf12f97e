"""The robot's commands on ``ars/robots/{rid}/cmd``.

The robot acts on ``ROBOT_COMMANDS``, silently leaves ``SERVER_COMMANDS`` to the server, and is
the one that answers anything else (unknown names, invalid payloads) with a ``rejected`` event,
so every command gets exactly one answer: ``accepted`` then ``done``/``failed``, or ``rejected``
with the reason. Command ids are remembered, so a QoS 1 redelivery is not acted on twice.
The handlers get the outbox and the parts they use (segmentation, candidate store, transfer,
model updater), never the agent.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from common.errors import ArsError, CommandRejected, ProtocolError
from common.ids import is_safe_id
from common.schemas import ROBOT_COMMANDS, SERVER_COMMANDS, Command, parse_json
from common.seen import SeenIds
from robot_agent.candidates import CandidateStore
from robot_agent.model_update import ModelUpdater
from robot_agent.outbox import RobotOutbox
from robot_agent.transfer import DataTransfer

logger = logging.getLogger(__name__)

SEEN_COMMANDS = 256


def command_id(payload: bytes) -> str | None:
    """The id of an invalid command, when one can be read, so the rejection can refer to it."""
    with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
        data = json.loads(payload)
        if isinstance(data, dict) and is_safe_id(data.get("id")):
            return str(data["id"])
    return None


class Segmentation(Protocol):
    """The camera-to-inference pipeline as the commands see it (the agent provides it)."""

    @property
    def segmenting(self) -> bool: ...

    @property
    def frames(self) -> int: ...

    @property
    def source_description(self) -> str: ...

    async def begin_segmentation(self) -> None: ...

    async def end_segmentation(self) -> None: ...


SpawnFn = Callable[[Coroutine[Any, Any, Any], str], object]


class RobotCommands:
    """Validates, deduplicates and answers commands; the work is done by the parts given."""

    def __init__(
        self,
        outbox: RobotOutbox,
        *,
        segmentation: Segmentation,
        store: CandidateStore,
        transfer: DataTransfer,
        updater: ModelUpdater,
        spawn: SpawnFn,
    ) -> None:
        self.outbox = outbox
        self.segmentation = segmentation
        self.store = store
        self.transfer = transfer
        self.updater = updater
        self.spawn = spawn
        self._seen = SeenIds(SEEN_COMMANDS)
        self._handlers: dict[str, Callable[[Command], Awaitable[None]]] = {
            "start_segmentation": self.start_segmentation,
            "stop_segmentation": self.stop_segmentation,
            "transfer_data": self.transfer_data,
            "rollback": self.rollback,
        }

    async def on_payload(self, payload: bytes, topic: str) -> None:
        out = self.outbox
        try:
            cmd = parse_json(Command, payload, where=topic)
        except ProtocolError as exc:
            await out.event(
                "rejected",
                f"invalid command on {topic}: {exc}",
                level="error",
                ref=command_id(payload),
            )
            return
        if cmd.cmd in SERVER_COMMANDS:
            return
        if not self._seen.first_time(cmd.id):
            logger.info("robot %s: duplicate command %s ignored", out.rid, cmd.id)
            return
        handler = self._handlers.get(cmd.cmd)
        try:
            if handler is None:
                raise CommandRejected(
                    f"unknown command {cmd.cmd!r}; robot commands: "
                    f"{', '.join(sorted(ROBOT_COMMANDS))}; server commands: "
                    f"{', '.join(sorted(SERVER_COMMANDS))}"
                )
            await handler(cmd)
        except CommandRejected as exc:
            await out.answer(cmd, "rejected", str(exc), level="warning")

    async def start_segmentation(self, cmd: Command) -> None:
        seg = self.segmentation
        if seg.segmenting:
            raise CommandRejected("already segmenting")
        await self.outbox.answer(cmd, "accepted", "start segmentation")
        await seg.begin_segmentation()
        await self.outbox.answer(cmd, "done", f"segmenting {seg.source_description}")

    async def stop_segmentation(self, cmd: Command) -> None:
        seg = self.segmentation
        if not seg.segmenting:
            raise CommandRejected("not segmenting")
        await self.outbox.answer(cmd, "accepted", "stop segmentation")
        await seg.end_segmentation()
        await self.outbox.answer(
            cmd,
            "done",
            f"stopped after {seg.frames} frames",
            data={"frames": seg.frames, "candidates": self.store.unsent_count},
        )

    async def transfer_data(self, cmd: Command) -> None:
        if self.transfer.busy:
            raise CommandRejected("a transfer is already waiting for its ack")
        if self.store.unsent_count == 0:
            raise CommandRejected("no candidate regions since the last transfer")
        await self.outbox.answer(cmd, "accepted", "transfer data")
        self.spawn(self._run_transfer(cmd), "robot-transfer")

    async def _run_transfer(self, cmd: Command) -> None:
        out = self.outbox
        try:
            report = await self.transfer.run()
        except ArsError as exc:
            await out.answer(cmd, "failed", str(exc), level="error")
            await out.state()
            return
        await out.state()
        await out.answer(
            cmd,
            "done",
            f"sent {report.regions} regions of {report.frames_considered} frames "
            f"({report.bytes_sent} bytes, {report.ratio:.1%} of full frames)",
            data=report.data(),
        )

    async def rollback(self, cmd: Command) -> None:
        self.updater.check_rollback()
        await self.outbox.answer(cmd, "accepted", "rollback")
        self.spawn(self._run_rollback(cmd), "robot-rollback")

    async def _run_rollback(self, cmd: Command) -> None:
        try:
            old, new = await self.updater.rollback()
        except ArsError as exc:
            await self.outbox.answer(cmd, "failed", f"rollback failed: {exc}", level="error")
            return
        await self.outbox.answer(
            cmd, "done", f"rolled back from {old} to {new}", data={"from": old, "to": new}
        )
