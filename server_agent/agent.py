"""The server agent: one MQTT link, one dispatcher, and the parts that do the work.

``ServerAgent`` is an async context manager: on enter it opens the store (failing jobs a crash
left running), connects with a last will (retained ``ServerState(online=False)``), and starts
the dispatcher and the state publisher; on exit it cancels fine-tuning, stops transfers and
publishes its offline state. Messages are handled one at a time in arrival order (a manifest
after its regions); long work (fine-tuning, model transfers) runs in its own tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt

from common.config import Settings
from common.envelope import MAGIC, decode
from common.errors import ArsError, CommandRejected, ProtocolError
from common.ids import is_safe_id
from common.mqtt import MqttLink, deaf_message
from common.router import Router
from common.schemas import (
    SERVER_COMMANDS,
    SERVER_REQUESTS,
    Command,
    ServerState,
    parse_json,
    validate,
)
from common.seen import SeenIds
from common.topics import Topics
from models.data import SampleSets
from server_agent.annotation import Annotation
from server_agent.finetune import RESTART_REASON, FinetuneRunner
from server_agent.intake import RegionIntake
from server_agent.outbox import Outbox
from server_agent.publisher import ModelPublisher
from server_agent.store import Store

logger = logging.getLogger(__name__)

#: ServerState is published at most this often (the protocol says 2/s).
STATE_PERIOD_S = 0.5
#: Command ids remembered to make QoS 1 redelivery of a command harmless.
SEEN_COMMANDS = 1024


class ServerAgent:
    """Regions in, annotations, fine-tuning and model versions out, all over MQTT."""

    def __init__(
        self,
        settings: Settings,
        *,
        sets: SampleSets,
        base_checkpoint: Path | None = None,
        client_id: str = "ars-server",
        transfer_idle_timeout: float | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.prefix)
        self.store = Store(settings.data_dir)
        will = aiomqtt.Will(
            self.topics.server_state, ServerState(online=False).to_json(), qos=1, retain=True
        )
        subs = [
            (self.topics.all_robots("regions"), 1),
            (self.topics.all_robots("cmd"), 1),
            (self.topics.all_robots("model/status"), 1),
            (self.topics.all_robots("state"), 1),
            (self.topics.server_cmd, 1),
        ]
        self.link = MqttLink(
            settings.mqtt,
            client_id=client_id,
            subscriptions=subs,
            will=will,
            on_connect=self._on_connect,
            queue_size=1024,
            heartbeat_topic=self.topics.heartbeat(client_id),
            on_deaf=self._on_deaf,
        )
        self.outbox = Outbox(self.link, self.topics, self._changed)
        self.annotation = Annotation(self.store, self.outbox)
        self.intake = RegionIntake(
            self.store,
            self.outbox,
            max_payload_bytes=settings.mqtt.max_payload_bytes,
            max_regions=settings.server.max_regions,
            on_stored=self.annotation.region_stored,
        )
        self.finetune = FinetuneRunner(
            self.store,
            self.outbox,
            settings.server,
            sets=sets,
            base_checkpoint=base_checkpoint or settings.server.base_model,
        )
        extra = {} if transfer_idle_timeout is None else {"idle_timeout": transfer_idle_timeout}
        self.publisher = ModelPublisher(
            self.store,
            self.outbox,
            settings,
            base_checkpoint=self.finetune.base_checkpoint,
            **extra,
        )
        self._dirty = asyncio.Event()
        self._online = True
        self._seen = SeenIds(SEEN_COMMANDS)
        self._tasks: list[asyncio.Task[None]] = []
        self._recovered: list[tuple[str, str, str]] = []
        self._router = self.routes()

    # --- lifetime --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._recovered = await asyncio.to_thread(self.finetune.recover)
        await self.link.__aenter__()
        self._tasks = [
            asyncio.create_task(self._dispatch(), name="server-dispatch"),
            asyncio.create_task(self._state_loop(), name="server-state"),
        ]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.finetune.close()
            await self.publisher.close()
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._online = False
            if self.link.connected.is_set():
                with contextlib.suppress(Exception):
                    await self.link.publish(
                        self.topics.server_state, await self._state_json(), retain=True, timeout=5
                    )
        finally:
            await self.link.__aexit__(et, e, tb)
            await asyncio.to_thread(self.store.close)

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await self.link.wait_connected(timeout)

    async def _on_deaf(self, link: MqttLink, silent_s: float) -> None:
        await self.outbox.event("info", deaf_message(silent_s), level="warning")

    async def _on_connect(self, link: MqttLink) -> None:
        await link.publish(self.topics.server_state, await self._state_json(), retain=True)
        recovered, self._recovered = self._recovered, []
        for job_id, rid, cmd_id in recovered:
            await self.outbox.event(
                "failed",
                f"fine-tune job {job_id} for {rid}: {RESTART_REASON}",
                ref=cmd_id,
                cmd="start_finetune",
                robot_id=rid,
                data={"job_id": job_id},
            )

    # --- state -----------------------------------------------------------------------------
    def _changed(self) -> None:
        self._dirty.set()

    def _state_sync(self) -> ServerState:
        regions, annotated = self.store.counts()
        return ServerState(
            online=self._online,
            annotation=self.annotation.session(),
            finetune=self.finetune.status,
            regions=regions,
            annotated=annotated,
            models=self.store.model_infos(),
            robots=sorted(self.store.robots()),
        )

    async def state(self) -> ServerState:
        return await asyncio.to_thread(self._state_sync)

    async def _state_json(self) -> bytes:
        return (await self.state()).to_json()

    async def _state_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.link.publish(
                    self.topics.server_state, await self._state_json(), retain=True
                )
            except (ArsError, TimeoutError) as exc:
                logger.warning("server state not published: %s", exc)
            await asyncio.sleep(STATE_PERIOD_S)

    # --- dispatch --------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        async for topic, payload in self.link.messages():
            try:
                await self._route(topic, payload)
            except ArsError as exc:
                with contextlib.suppress(Exception):
                    await self.outbox.error(topic, str(exc))
            except Exception as exc:  # a handler bug must not stop the dispatcher
                logger.exception("handler for %s failed", topic)
                with contextlib.suppress(Exception):
                    await self.outbox.error(topic, f"internal error: {exc.__class__.__name__}")

    def routes(self) -> Router[Callable[..., Awaitable[None]]]:
        """One handler per topic filter; robot handlers take the robot id first."""
        t = self.topics
        router: Router[Callable[..., Awaitable[None]]] = Router()
        router.add(t.server_cmd, self._request)
        router.add(t.all_robots("regions"), self.intake.handle)
        router.add(t.all_robots("cmd"), self._command)
        router.add(t.all_robots("model/status"), self.publisher.on_status)
        router.add(t.all_robots("state"), self.publisher.on_state)
        return router

    async def _route(self, topic: str, payload: bytes) -> None:
        found = self._router.match(topic)
        if found is None:
            return
        handler, ids = found
        if not all(is_safe_id(i) for i in ids):
            return  # not a robot id: no robot of ours publishes there
        await handler(*ids, topic, payload)

    async def _command(self, rid: str, topic: str, payload: bytes) -> None:
        """A button on ``robots/{rid}/cmd``: server commands only; the robot answers the rest."""
        try:
            command = parse_json(Command, payload, where=topic)
        except ProtocolError:
            return  # the robot answers invalid commands (exactly one answer)
        if command.cmd not in SERVER_COMMANDS or not self._seen.first_time(command.id):
            return
        handlers = {
            "start_annotation": self.annotation.start,
            "stop_annotation": self.annotation.stop,
            "start_finetune": self.finetune.start,
            "cancel_finetune": self.finetune.cancel,
            "transfer_model": self.publisher.start,
        }
        logger.info("robot %s: command %s id=%s", rid, command.cmd, command.id)
        try:
            await handlers[command.cmd](rid, command)
        except CommandRejected as exc:
            await self.outbox.rejected(command, rid, str(exc))

    # --- requests on ars/server/cmd --------------------------------------------------------
    async def _request(self, topic: str, payload: bytes) -> None:
        parts: list[bytes] = []
        if payload.startswith(MAGIC):
            env = decode(payload, max_bytes=self.settings.mqtt.max_payload_bytes)
            command = validate(Command, env.header, where=topic)
            parts = env.parts
        else:
            command = parse_json(Command, payload, where=topic)
        self.outbox.reply_topic(command)  # no valid reply topic: an error event, no answer
        if command.cmd not in SERVER_REQUESTS:
            await self._refuse(command, topic, f"unknown request {command.cmd!r}")
            return
        try:
            if command.cmd == "get_region":
                await self._get_region(command)
                return
            data = await self._answer(command, parts)
        except ArsError as exc:
            await self._refuse(command, topic, str(exc))
            return
        await self.outbox.reply(command, ok=True, data=data)

    async def _refuse(self, command: Command, topic: str, reason: str) -> None:
        """The error event first, then the reply: a client holding the reply has both."""
        await self.outbox.error(topic, f"{command.cmd} refused: {reason}", ref=command.id)
        if command.cmd == "get_region":
            header = {"ref": command.id, "ok": False, "error": reason, "data": {}}
            await self.outbox.reply_envelope(command, header, [])
        else:
            await self.outbox.reply(command, ok=False, error=reason)

    async def _answer(self, command: Command, parts: list[bytes]) -> dict[str, Any]:
        args = command.args
        if command.cmd == "list_regions":
            return await asyncio.to_thread(self.annotation.list_regions, args)
        if command.cmd == "submit_annotation":
            data = await asyncio.to_thread(self.annotation.submit, args, parts)
            self._changed()
            return data
        if command.cmd == "list_models":
            infos = await asyncio.to_thread(self.store.model_infos)
            return {"models": [m.model_dump(mode="json") for m in infos]}
        return (await self.state()).model_dump(mode="json")

    async def _get_region(self, command: Command) -> None:
        row, parts = await asyncio.to_thread(self.annotation.get_region, command.args)
        header = {
            "ref": command.id,
            "ok": True,
            "error": None,
            "data": {},
            "region": row.header,
            "annotated": row.annotated,
            "skipped": row.skipped,
        }
        await self.outbox.reply_envelope(command, header, parts)
