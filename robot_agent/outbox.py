"""What the robot says: its events, retained state, model status and previews, on its own topics.

Handlers get this outbox and the parts of the robot they use, never the agent, so every event
has the same source and shape, and a broker away for longer than the publish timeout is logged,
not raised, so no handler loop dies of it (the link reconnects and the next state catches up).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from common.mqtt import MqttLink
from common.schemas import Command, Event, EventKind, Level, ModelStatus, RobotState
from common.topics import Topics

logger = logging.getLogger(__name__)


class RobotOutbox:
    """Publishes under ``<prefix>/robots/<rid>/``; ``state()`` builds the current RobotState."""

    def __init__(
        self, link: MqttLink, topics: Topics, rid: str, state: Callable[[], RobotState]
    ) -> None:
        self.link = link
        self.topics = topics
        self.rid = rid
        self._state = state

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        try:
            await self.link.publish(topic, payload, qos=qos, retain=retain)
        except TimeoutError as exc:
            logger.warning("robot %s: dropped a message for %s: %s", self.rid, topic, exc)

    async def goodbye(self, offline: RobotState) -> None:
        """The retained offline state on a clean stop, while the link is up (best effort: the
        broker's will says the same when it is not)."""
        if self.link.connected.is_set():
            with contextlib.suppress(Exception):
                await self.link.publish(
                    self.topics.robot_state(self.rid),
                    offline.to_json(),
                    qos=1,
                    retain=True,
                    timeout=3.0,
                )

    async def state(self) -> None:
        """The retained state, now."""
        await self.publish(self.topics.robot_state(self.rid), self._state().to_json(), retain=True)

    async def event(
        self,
        kind: EventKind,
        msg: str,
        *,
        level: Level = "info",
        ref: str | None = None,
        cmd: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        evt = Event(
            source=f"robot:{self.rid}",
            level=level,
            kind=kind,
            msg=msg[:4096],
            ref=ref,
            cmd=cmd,
            data=data or {},
        )
        await self.publish(self.topics.robot_events(self.rid), evt.to_json())

    async def answer(
        self,
        command: Command,
        kind: EventKind,
        msg: str,
        *,
        level: Level = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        """An event that answers ``command`` (accepted, rejected, done, failed)."""
        await self.event(kind, msg, level=level, ref=command.id, cmd=command.cmd, data=data)

    async def error(self, msg: str) -> None:
        await self.event("error", msg, level="error")

    async def status(self, status: ModelStatus) -> None:
        await self.publish(self.topics.model_status(self.rid), status.to_json())

    async def preview(self, payload: bytes) -> None:
        """QoS 0: a preview the broker cannot take now is dropped, the next one follows."""
        await self.link.publish(self.topics.robot_preview(self.rid), payload, qos=0)
