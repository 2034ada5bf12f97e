"""What the server says: events on ``ars/server/events``, replies on a request's reply topic,
region acks, model offers and chunks on a robot's topics.

One small object shared by the handlers so every event has the same source and shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from common.envelope import encode
from common.errors import ProtocolError
from common.mqtt import MqttLink
from common.schemas import (
    ChunkHeader,
    Command,
    Event,
    EventKind,
    Level,
    ModelOffer,
    RegionsAck,
    Reply,
)
from common.topics import Topics

logger = logging.getLogger(__name__)

SOURCE = "server"
ChangeFn = Callable[[], None]
_LEVELS: dict[str, Level] = {"rejected": "warning", "failed": "error", "error": "error"}


class Outbox:
    """Publishes server events and request replies; ``changed()`` marks the state dirty."""

    def __init__(self, link: MqttLink, topics: Topics, changed: ChangeFn) -> None:
        self.link = link
        self.topics = topics
        self.changed = changed

    async def event(
        self,
        kind: EventKind,
        msg: str,
        *,
        level: Level | None = None,
        ref: str | None = None,
        cmd: str | None = None,
        robot_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        body = dict(data or {})
        if robot_id is not None:
            body.setdefault("robot_id", robot_id)
        event = Event(
            source=SOURCE,
            level=level or _LEVELS.get(kind, "info"),
            kind=kind,
            msg=msg[:4096],
            ref=ref,
            cmd=cmd,
            data=body,
        )
        await self.link.publish(self.topics.server_events, event.to_json(), qos=1)

    async def accepted(self, command: Command, rid: str, msg: str, **data: Any) -> None:
        await self.event("accepted", msg, ref=command.id, cmd=command.cmd, robot_id=rid, data=data)

    async def rejected(self, command: Command, rid: str, reason: str) -> None:
        logger.info("robot %s: %s rejected: %s", rid, command.cmd, reason)
        await self.event("rejected", reason, ref=command.id, cmd=command.cmd, robot_id=rid)

    async def done(self, command: Command, rid: str, msg: str, **data: Any) -> None:
        await self.event("done", msg, ref=command.id, cmd=command.cmd, robot_id=rid, data=data)

    async def failed(self, command: Command, rid: str, msg: str, **data: Any) -> None:
        await self.event("failed", msg, ref=command.id, cmd=command.cmd, robot_id=rid, data=data)

    async def error(self, topic: str, reason: str, *, ref: str | None = None) -> None:
        """A bad payload: logged once, answered with an error event naming the topic."""
        logger.warning("bad message on %s: %s", topic, reason)
        await self.event("error", f"{topic}: {reason}", ref=ref, data={"topic": topic})

    # --- to a robot ------------------------------------------------------------------------
    async def regions_ack(self, ack: RegionsAck) -> None:
        await self.link.publish(self.topics.robot_regions_ack(ack.robot_id), ack.to_json(), qos=1)

    async def model_offer(self, rid: str, offer: ModelOffer) -> None:
        await self.link.publish(self.topics.model_offer(rid), offer.to_json(), qos=1)

    async def model_chunk(self, rid: str, header: ChunkHeader, chunk: bytes) -> None:
        payload = encode(header.model_dump(mode="json"), [chunk])
        await self.link.publish(self.topics.model_chunk(rid), payload, qos=1)

    # --- replies ---------------------------------------------------------------------------
    def reply_topic(self, command: Command) -> str:
        """The request's reply topic; only ``<prefix>/server/reply/<client>`` is allowed."""
        topic = command.reply_to
        head = self.topics.server_reply_root
        if not topic or not topic.startswith(head):
            raise ProtocolError(f"{command.cmd}: reply_to must be a topic under {head}")
        self.topics.server_reply(topic[len(head) :])  # validates the client id
        return topic

    async def reply(
        self,
        command: Command,
        *,
        ok: bool,
        error: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        reply = Reply(ref=command.id, ok=ok, error=error, data=data or {})
        await self.link.publish(self.reply_topic(command), reply.to_json(), qos=1)

    async def reply_envelope(
        self, command: Command, header: dict[str, Any], parts: list[bytes]
    ) -> None:
        await self.link.publish(self.reply_topic(command), encode(header, parts), qos=1)
