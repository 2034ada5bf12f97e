"""The robot's commands on ``ars/robots/{rid}/cmd``.

The robot acts on ``ROBOT_COMMANDS``, silently leaves ``SERVER_COMMANDS`` to the server, and is
the one that answers anything else (unknown names, invalid payloads) with a ``rejected`` event,
so every command gets exactly one answer: ``accepted`` then ``done``/``failed``, or ``rejected``
with the reason. Command ids are remembered, so a QoS 1 redelivery is not acted on twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from common.errors import ArsError, CommandRejected, ProtocolError
from common.ids import is_safe_id
from common.schemas import ROBOT_COMMANDS, SERVER_COMMANDS, Command, parse_json
from common.seen import SeenIds

if TYPE_CHECKING:
    from robot_agent.agent import RobotAgent

logger = logging.getLogger(__name__)

SEEN_COMMANDS = 256


def command_id(payload: bytes) -> str | None:
    """The id of an invalid command, when one can be read, so the rejection can refer to it."""
    with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
        data = json.loads(payload)
        if isinstance(data, dict) and is_safe_id(data.get("id")):
            return str(data["id"])
    return None


class RobotCommands:
    """Validates, deduplicates and answers commands; the work is the agent's."""

    def __init__(self, agent: RobotAgent) -> None:
        self.agent = agent
        self._seen = SeenIds(SEEN_COMMANDS)
        self._handlers: dict[str, Callable[[Command], Awaitable[None]]] = {
            "start_segmentation": self.start_segmentation,
            "stop_segmentation": self.stop_segmentation,
            "transfer_data": self.transfer_data,
            "rollback": self.rollback,
        }

    async def on_payload(self, payload: bytes, topic: str) -> None:
        agent = self.agent
        try:
            cmd = parse_json(Command, payload, where=topic)
        except ProtocolError as exc:
            await agent.event(
                "rejected",
                f"invalid command on {topic}: {exc}",
                level="error",
                ref=command_id(payload),
            )
            return
        if cmd.cmd in SERVER_COMMANDS:
            return
        if not self._seen.first_time(cmd.id):
            logger.info("robot %s: duplicate command %s ignored", agent.rid, cmd.id)
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
            await agent.event("rejected", str(exc), level="warning", cmd=cmd)

    async def start_segmentation(self, cmd: Command) -> None:
        agent = self.agent
        if agent.segmenting:
            raise CommandRejected("already segmenting")
        await agent.event("accepted", "start segmentation", cmd=cmd)
        await agent.begin_segmentation()
        await agent.event("done", f"segmenting {agent.source.description}", cmd=cmd)

    async def stop_segmentation(self, cmd: Command) -> None:
        agent = self.agent
        if not agent.segmenting:
            raise CommandRejected("not segmenting")
        await agent.event("accepted", "stop segmentation", cmd=cmd)
        await agent.end_segmentation()
        await agent.event(
            "done",
            f"stopped after {agent.frames} frames",
            cmd=cmd,
            data={"frames": agent.frames, "candidates": agent.store.unsent_count},
        )

    async def transfer_data(self, cmd: Command) -> None:
        agent = self.agent
        if agent.transfer.busy:
            raise CommandRejected("a transfer is already waiting for its ack")
        if agent.store.unsent_count == 0:
            raise CommandRejected("no candidate regions since the last transfer")
        await agent.event("accepted", "transfer data", cmd=cmd)
        agent.spawn(self._run_transfer(cmd), "robot-transfer")

    async def _run_transfer(self, cmd: Command) -> None:
        agent = self.agent
        try:
            report = await agent.transfer.run()
        except ArsError as exc:
            await agent.event("failed", str(exc), level="error", cmd=cmd)
            await agent.publish_state()
            return
        await agent.publish_state()
        await agent.event(
            "done",
            f"sent {report.regions} regions of {report.frames_considered} frames "
            f"({report.bytes_sent} bytes, {report.ratio:.1%} of full frames)",
            cmd=cmd,
            data=report.data(),
        )

    async def rollback(self, cmd: Command) -> None:
        agent = self.agent
        agent.updater.check_rollback()
        await agent.event("accepted", "rollback", cmd=cmd)
        agent.spawn(self._run_rollback(cmd), "robot-rollback")

    async def _run_rollback(self, cmd: Command) -> None:
        agent = self.agent
        try:
            old, new = await agent.updater.rollback()
        except ArsError as exc:
            await agent.event("failed", f"rollback failed: {exc}", level="error", cmd=cmd)
            return
        await agent.event(
            "done", f"rolled back from {old} to {new}", cmd=cmd, data={"from": old, "to": new}
        )
