"""Helpers for the server-agent tests: settings, MQTT peers, regions and a tiny checkpoint.

Imported by the ``test_server_*`` modules; the one test here checks the training-sample rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import numpy as np

from common.config import MqttSettings, ServerSettings, Settings
from common.envelope import MAGIC, decode, encode
from common.images import encode_png
from common.mqtt import MqttLink
from common.schemas import Command, Event, RegionHeader, Reply, TransferManifest, new_id
from common.topics import Topics
from models.checkpoint import save_checkpoint
from models.network import build_model
from tests.helpers.brokers import BrokerHandle

T = TypeVar("T")
TOPICS = Topics("ars")
RID = "rover1"
FRAME_W, FRAME_H = 64, 48


def server_settings(broker: BrokerHandle, data_dir: Path, **server: Any) -> Settings:
    """Small, fast server settings for tests (tiny frames, few frames, few iterations)."""
    base: dict[str, Any] = dict(
        iterations=3,
        batch_size=2,
        train_width=64,
        train_height=48,
        replay_frames=2,
        eval_frames=2,
        chunk_size=1024,
        threads=1,
    )
    base.update(server)
    return Settings(data_dir=data_dir, mqtt=broker.mqtt("server"), server=ServerSettings(**base))


def tiny_checkpoint(path: Path, version: str = "base-tiny", seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    save_checkpoint(path, build_model("tiny"), arch="tiny", version=version, dtype="fp16")
    return path


class Peer:
    """An MQTT client that records every message it receives, for assertions."""

    def __init__(self, settings: MqttSettings, topics: Sequence[str], name: str = "peer") -> None:
        self.client_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.link = MqttLink(
            settings, client_id=self.client_id, subscriptions=[(t, 1) for t in topics]
        )
        self.received: list[tuple[str, bytes]] = []
        self._new = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.link.__aenter__()
        await self.link.wait_connected(10)
        self._task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.link.__aexit__(et, e, tb)

    async def _pump(self) -> None:
        async for topic, payload in self.link.messages():
            self.received.append((topic, payload))
            self._new.set()

    async def wait_for(
        self, match: Callable[[str, bytes], T | None], timeout: float = 15.0, start: int = 0
    ) -> T:
        """The first received message (from index ``start``) that ``match`` maps to non-None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = start
        while True:
            for topic, payload in self.received[seen:]:
                found = match(topic, payload)
                if found is not None:
                    return found
            seen = len(self.received)
            self._new.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("no matching message")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), remaining)

    # --- server events -------------------------------------------------------------------
    def events(self) -> list[Event]:
        return [Event.model_validate_json(p) for t, p in self.received if t == TOPICS.server_events]

    async def event(
        self,
        ref: str | None = None,
        kinds: Sequence[str] = (),
        timeout: float = 15.0,
        start: int = 0,
    ) -> Event:
        def match(topic: str, payload: bytes) -> Event | None:
            if topic != TOPICS.server_events:
                return None
            ev = Event.model_validate_json(payload)
            if (ref is None or ev.ref == ref) and (not kinds or ev.kind in kinds):
                return ev
            return None

        return await self.wait_for(match, timeout, start)

    async def command(self, rid: str, cmd: str, **args: Any) -> Command:
        command = Command(cmd=cmd, args=args)
        await self.link.publish(TOPICS.robot_cmd(rid), command.to_json())
        return command

    async def final(self, rid: str, cmd: str, timeout: float = 15.0, **args: Any) -> Event:
        """Send a command and wait for its final answer (done, failed or rejected)."""
        command = await self.command(rid, cmd, **args)
        return await self.event(command.id, ("done", "failed", "rejected"), timeout)

    # --- requests ------------------------------------------------------------------------
    @property
    def reply_topic(self) -> str:
        return TOPICS.server_reply(self.client_id)

    async def request(
        self, cmd: str, args: dict[str, Any] | None = None, parts: Sequence[bytes] | None = None
    ) -> tuple[dict[str, Any], list[bytes]]:
        """(Reply fields or reply-envelope header, parts) of one request on ars/server/cmd."""
        command = Command(cmd=cmd, args=args or {}, reply_to=self.reply_topic)
        if parts is None:
            payload = command.to_json()
        else:
            payload = encode(command.model_dump(mode="json"), list(parts))
        await self.link.publish(TOPICS.server_cmd, payload)

        def match(topic: str, raw: bytes) -> tuple[dict[str, Any], list[bytes]] | None:
            if topic != self.reply_topic:
                return None
            if raw.startswith(MAGIC):
                env = decode(raw)
                got: tuple[dict[str, Any], list[bytes]] = (env.header, env.parts)
            else:
                got = (Reply.model_validate_json(raw).model_dump(mode="json"), [])
            return got if got[0].get("ref") == command.id else None

        return await self.wait_for(match)


def operator(broker: BrokerHandle) -> Peer:
    return Peer(
        broker.mqtt("operator"),
        [TOPICS.server_events, TOPICS.server_state, "ars/server/reply/#"],
        "operator",
    )


def robot_peer(broker: BrokerHandle, rid: str = RID) -> Peer:
    return Peer(broker.mqtt(f"robot-{rid}"), [f"ars/robots/{rid}/#"], f"robot-{rid}")


# --- regions ---------------------------------------------------------------------------------
def make_region(
    rid: str = RID,
    *,
    region_id: str | None = None,
    transfer_id: str = "t1",
    score: float = 0.5,
    box: tuple[int, int, int, int] = (16, 12, 32, 24),
    seed: int = 0,
    frame_id: str | None = None,
) -> tuple[RegionHeader, bytes, bytes]:
    """A region of a simulator rural frame (so the oracle can label it): header, crop, mask."""
    from simulator.drive import Drive

    drive = Drive("rural", seed=seed, width=FRAME_W, height=FRAME_H)
    frame = drive.frame(0)
    x, y, w, h = box
    header = RegionHeader(
        robot_id=rid,
        transfer_id=transfer_id,
        region_id=region_id or new_id(),
        frame_id=frame_id or frame.frame_id,
        score=score,
        mean_entropy=0.3,
        region_entropy=0.4,
        box=box,
        frame_size=(FRAME_W, FRAME_H),
        model_version="base-tiny",
    )
    crop = np.ascontiguousarray(frame.image[y : y + h, x : x + w])
    mask = np.zeros((h, w), dtype=np.uint8)
    return header, encode_png(crop), encode_png(mask)


def region_payload(header: RegionHeader, crop: bytes, mask: bytes) -> bytes:
    return encode(header.model_dump(mode="json"), [crop, mask])


def manifest_payload(rid: str, transfer_id: str, region_ids: list[str]) -> bytes:
    manifest = TransferManifest(
        robot_id=rid,
        transfer_id=transfer_id,
        region_ids=region_ids,
        frames_considered=len(region_ids) * 5,
        bytes_sent=1000,
        full_frames_bytes=20000,
    )
    return encode(manifest.model_dump(mode="json"))
