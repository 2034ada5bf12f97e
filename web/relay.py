"""MQTT side of the web UI: one reader task fans messages out to per-browser queues.

The relay validates each message once at the edge, turns it into the browser's JSON (or passes
a preview envelope through as-is), keeps the latest retained-like items for the catch-up
snapshot of a new browser, and answers request/response calls on its own reply topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import envelope
from common.config import Settings
from common.errors import ArsError, ProtocolError
from common.ids import is_safe_id
from common.mqtt import MqttLink
from common.router import Router
from common.schemas import (
    Command,
    Event,
    Level,
    ModelStatus,
    PreviewHeader,
    Reply,
    RobotState,
    ServerState,
    new_id,
    parse_json,
    validate,
)
from common.topics import Topics
from web.queue import Frame, LatestWinsQueue

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
MAX_LOSS_POINTS = 5000


class RelayError(ArsError):
    """A request the relay could not complete (no answer in time, broker away)."""


@dataclass(frozen=True)
class ReplyMessage:
    """A server answer: JSON ``Reply`` or a reply envelope (``get_region``) with its parts."""

    ok: bool
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)
    parts: list[bytes] = field(default_factory=list)


def web_client_id() -> str:
    return f"ars-web-{uuid.uuid4().hex[:10]}"


def subscriptions(topics: Topics, client_id: str) -> list[tuple[str, int]]:
    """What the relay listens to (QoS0 for previews: latest wins, nothing to redeliver)."""
    return [
        (topics.all_robots("state"), 1),
        (topics.all_robots("events"), 1),
        (topics.all_robots("preview"), 0),
        (topics.all_robots("model/status"), 1),
        (topics.server_state, 1),
        (topics.server_events, 1),
        (topics.server_reply(client_id), 1),
    ]


def _text(msg_type: str, /, **fields: Any) -> str:
    return json.dumps({"type": msg_type, **fields}, separators=(",", ":"), allow_nan=False)


class Relay:
    """Fan-out of MQTT messages to browsers, plus commands and requests from browsers."""

    def __init__(self, settings: Settings, link: MqttLink, client_id: str) -> None:
        self.settings = settings
        self.link = link
        self.client_id = client_id
        self.topics = Topics(settings.prefix)
        self.reply_topic = self.topics.server_reply(client_id)
        self.clients: set[LatestWinsQueue] = set()
        self._preview_robot: dict[LatestWinsQueue, str] = {}
        self._snapshot: OrderedDict[Hashable, Frame] = OrderedDict()
        self._pending: dict[str, asyncio.Future[ReplyMessage]] = {}
        self._job_id: object = None
        self._losses: list[tuple[int, float]] = []
        self.received = 0
        self.rejected = 0
        self._router = self.routes()

    # --- browsers --------------------------------------------------------------------------
    def attach(self, queue: LatestWinsQueue) -> None:
        """Register a browser's queue and fill it with the catch-up snapshot."""
        for key, item in self._snapshot.items():
            queue.put(item, key)
        self.clients.add(queue)

    def detach(self, queue: LatestWinsQueue) -> None:
        self.clients.discard(queue)
        self._preview_robot.pop(queue, None)
        queue.close()

    def select_preview(self, queue: LatestWinsQueue, rid: str | None) -> None:
        """Send this browser only ``rid``'s previews (None: every robot's)."""
        if rid is None:
            self._preview_robot.pop(queue, None)
            return
        self._preview_robot[queue] = rid
        latest = self._snapshot.get(("preview", rid))
        if latest is not None:
            queue.put(latest, ("preview", rid))

    def broadcast(self, item: Frame, key: Hashable | None = None) -> None:
        for queue in list(self.clients):
            queue.put(item, key)

    def local_event(self, msg: str, *, level: Level = "info") -> None:
        """An event of the web UI itself (its MQTT link), shown in every browser's log."""
        event = Event(source="web", level=level, kind="info", msg=msg)
        self.broadcast(_text("web_event", event=event.model_dump(mode="json")))

    def _retain(self, key: Hashable, item: Frame) -> None:
        self._snapshot[key] = item
        self._snapshot.move_to_end(key)
        self.broadcast(item, key)

    def _broadcast_preview(self, rid: str, payload: bytes) -> None:
        key = ("preview", rid)
        self._snapshot[key] = payload
        for queue in list(self.clients):
            if self._preview_robot.get(queue, rid) == rid:
                queue.put(payload, key)

    # --- MQTT -> browsers ------------------------------------------------------------------
    async def run(self) -> None:
        """The one reader task: route every message, never awaiting a browser."""
        async for topic, payload in self.link.messages():
            try:
                self.route(topic, payload)
                self.received += 1
            except ProtocolError as exc:
                self.rejected += 1
                logger.warning("web relay dropped a message topic=%s: %s", topic, exc)

    def routes(self) -> Router[Callable[..., None]]:
        """One handler per subscribed topic filter; robot handlers take the robot id first."""
        t = self.topics
        router: Router[Callable[..., None]] = Router()
        router.add(self.reply_topic, self._on_reply)
        router.add(t.server_state, self._on_server_state)
        router.add(t.server_events, self._on_server_event)
        router.add(t.all_robots("preview"), self._preview)
        router.add(t.all_robots("state"), self._on_robot_state)
        router.add(t.all_robots("events"), self._on_robot_event)
        router.add(t.all_robots("model/status"), self._on_model_status)
        return router

    def route(self, topic: str, payload: bytes) -> None:
        """Validate one message and hand it to the browsers; ProtocolError if malformed."""
        if not payload:
            return  # a cleared retained message
        found = self._router.match(topic)
        if found is None or not all(is_safe_id(i) for i in found[1]):
            raise ProtocolError(f"{topic}: not a topic the web relay handles")
        handler, ids = found
        handler(*ids, payload, topic)

    def _on_reply(self, payload: bytes, topic: str) -> None:
        self._resolve(payload)

    def _on_server_state(self, payload: bytes, topic: str) -> None:
        state = parse_json(ServerState, payload, where=topic)
        self._retain(("server_state",), _text("server_state", state=state.model_dump(mode="json")))

    def _on_server_event(self, payload: bytes, topic: str) -> None:
        event = parse_json(Event, payload, where=topic)
        if event.kind == "progress":
            self._remember_progress(event)
        self.broadcast(_text("server_event", event=event.model_dump(mode="json")))

    def _on_robot_state(self, rid: str, payload: bytes, topic: str) -> None:
        rs = parse_json(RobotState, payload, where=topic)
        if rs.robot_id != rid:
            raise ProtocolError(f"{topic}: robot_id {rs.robot_id!r} differs from the topic")
        self._retain(
            ("robot_state", rid),
            _text("robot_state", robot_id=rid, state=rs.model_dump(mode="json")),
        )

    def _on_robot_event(self, rid: str, payload: bytes, topic: str) -> None:
        event = parse_json(Event, payload, where=topic)
        self.broadcast(_text("robot_event", robot_id=rid, event=event.model_dump(mode="json")))

    def _on_model_status(self, rid: str, payload: bytes, topic: str) -> None:
        status = parse_json(ModelStatus, payload, where=topic)
        text = _text("model_status", robot_id=rid, status=status.model_dump(mode="json"))
        self._snapshot[("model_status", rid)] = text
        self.broadcast(text)

    def _remember_progress(self, event: Event) -> None:
        """Keep the running job's loss curve so a browser joining mid-job can draw it whole."""
        data = event.data
        job_id, iteration, loss = data.get("job_id"), data.get("iteration"), data.get("loss")
        if not isinstance(iteration, int) or not isinstance(loss, int | float):
            return
        if job_id != self._job_id:
            self._job_id = job_id
            self._losses = []
        if len(self._losses) < MAX_LOSS_POINTS:
            self._losses.append((iteration, float(loss)))
        self._snapshot[("finetune_history",)] = _text(
            "finetune_history",
            job_id=job_id,
            robot_id=data.get("robot_id"),
            iterations=data.get("iterations"),
            losses=self._losses,
        )

    def _preview(self, rid: str, payload: bytes, topic: str) -> None:
        """Pass the envelope through untouched after checking its header (the browser parses)."""
        env = envelope.decode(payload, max_bytes=self.settings.mqtt.max_payload_bytes)
        header = validate(PreviewHeader, env.header, where=topic)
        if header.robot_id != rid:
            raise ProtocolError(f"{topic}: robot_id {header.robot_id!r} differs from the topic")
        if len(env.parts) != 2:
            raise ProtocolError(f"{topic}: preview needs 2 parts (JPEG, PNG), got {len(env.parts)}")
        self._broadcast_preview(rid, payload)

    def _resolve(self, payload: bytes) -> None:
        if payload.startswith(envelope.MAGIC):
            env = envelope.decode(payload, max_bytes=self.settings.mqtt.max_payload_bytes)
            ref = env.header.get("ref")
            reply = ReplyMessage(
                ok=bool(env.header.get("ok")),
                error=_opt_str(env.header.get("error")),
                data=dict(env.header.get("data") or {}),
                header=env.header,
                parts=env.parts,
            )
        else:
            answer = parse_json(Reply, payload, where=self.reply_topic)
            ref = answer.ref
            reply = ReplyMessage(ok=answer.ok, error=answer.error, data=dict(answer.data))
        future = self._pending.get(str(ref))
        if future is None or future.done():
            logger.info("web relay: reply ref=%s matches no pending request", ref)
            return
        future.set_result(reply)

    # --- browsers -> MQTT ------------------------------------------------------------------
    async def send_command(
        self, rid: str, cmd: str, args: Mapping[str, Any], *, timeout: float = 5.0
    ) -> str:
        """Publish a button's ``Command`` on the robot's cmd topic; returns the command id."""
        command = Command(cmd=cmd, args=dict(args))
        await self._publish(self.topics.robot_cmd(rid), command.to_json(), timeout)
        logger.info("web relay sent cmd=%s id=%s robot=%s", cmd, command.id, rid)
        return command.id

    async def request(
        self,
        req: str,
        args: Mapping[str, Any],
        *,
        parts: Sequence[bytes] | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> ReplyMessage:
        """A request on the server cmd topic with our reply topic; waits for its answer."""
        cmd_id = new_id()
        future: asyncio.Future[ReplyMessage] = asyncio.get_running_loop().create_future()
        self._pending[cmd_id] = future
        try:
            if parts is None:
                payload = Command(
                    cmd=req, id=cmd_id, args=dict(args), reply_to=self.reply_topic
                ).to_json()
            else:
                header = {"v": 1, "cmd": req, "id": cmd_id, "reply_to": self.reply_topic}
                payload = envelope.encode({**header, "args": dict(args)}, parts)
            await self._publish(self.topics.server_cmd, payload, timeout)
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError as exc:
                raise RelayError(
                    f"no answer to {req} from the server within {timeout:.0f}s"
                ) from exc
        finally:
            self._pending.pop(cmd_id, None)

    async def _publish(self, topic: str, payload: bytes, timeout: float) -> None:
        try:
            await self.link.publish(topic, payload, qos=1, timeout=timeout)
        except TimeoutError as exc:
            raise RelayError(f"broker unreachable: could not publish to {topic}") from exc

    def close(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        for queue in list(self.clients):
            self.detach(queue)


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)
