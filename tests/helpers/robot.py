"""Helpers for the robot agent tests: settings, tiny checkpoints, frames, an operator client.

(No tests here; the module is shared by tests/test_robot_*.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import RobotSettings, ServerSettings, Settings
from common.envelope import decode
from common.images import encode_png
from common.mqtt import make_client
from common.schemas import Command, Event, ModelStatus, RobotState
from common.topics import Topics
from models.checkpoint import save_checkpoint
from models.network import build_model
from tests.helpers.brokers import BrokerHandle

RID = "rover1"
TOPICS = Topics()


def tiny_checkpoint(path: Path, version: str, seed: int = 0) -> Path:
    """An untrained tiny model, different per seed."""
    torch.manual_seed(seed)
    model = build_model("tiny")
    save_checkpoint(path, model, arch="tiny", version=version)
    return path


def robot_settings(
    broker: BrokerHandle, tmp_path: Path, *, frames: int = 6, **robot: Any
) -> Settings:
    """Small frames (160x120, inference at 80x60) from a folder, the tiny model, one thread."""
    folder = tmp_path / "camera"
    if not folder.exists():
        write_noise_frames(folder, frames, 160, 120)
    model = tmp_path / "base.pt"
    if not model.exists():
        tiny_checkpoint(model, "base", seed=0)
    values: dict[str, Any] = {
        "id": RID,
        "source": f"folder:{folder}",
        "camera_fps": 40.0,
        "width": 160,
        "height": 120,
        "infer_width": 80,
        "infer_height": 60,
        "threads": 1,
        "device": "cpu",
        "runtime": "torch",  # test_robot_runtime.py covers onnx and auto
        "store_every": 1,  # one candidate per frame, as the tests count them
        "preview_fps": 20.0,
        "model": model,
    }
    values.update(robot)
    return Settings(
        data_dir=tmp_path / "robot",
        mqtt=broker.mqtt(f"robot-{RID}"),
        robot=RobotSettings(**values),
        server=ServerSettings(resend_timeout_s=0.4),
    )


@dataclass
class Received:
    topic: str
    payload: bytes

    @property
    def leaf(self) -> str:
        return self.topic.split("/", 3)[3]

    def json(self) -> Any:
        return json.loads(self.payload)


class Operator:
    """An admin MQTT client: sends commands and records everything under the robot's topics."""

    def __init__(self, broker: BrokerHandle, user: str = "operator") -> None:
        self.client = make_client(broker.mqtt(user), client_id=f"test-{user}")
        self.received: list[Received] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.on_message: Callable[[Received], Any] | None = None

    async def __aenter__(self) -> Operator:
        await self.client.__aenter__()
        await self.client.subscribe(f"ars/robots/{RID}/#", qos=1)
        self._task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.__aexit__(None, None, None)

    async def _pump(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            assert isinstance(payload, bytes | bytearray)
            item = Received(message.topic.value, bytes(payload))
            self.received.append(item)
            if self.on_message is not None:
                result = self.on_message(item)
                if asyncio.iscoroutine(result):
                    await result
            async with self._changed:
                self._changed.notify_all()

    async def send(self, cmd: str, **args: Any) -> str:
        command = Command(cmd=cmd, args=args)
        await self.client.publish(TOPICS.robot_cmd(RID), command.to_json(), qos=1)
        return command.id

    async def publish(self, leaf: str, payload: bytes | str, qos: int = 1) -> None:
        await self.client.publish(TOPICS.robot(RID, leaf), payload, qos=qos)

    def of(self, leaf: str) -> list[Received]:
        return [r for r in self.received if r.leaf == leaf]

    def events(self) -> list[Event]:
        return [Event.model_validate(r.json()) for r in self.of("events")]

    def statuses(self) -> list[ModelStatus]:
        return [ModelStatus.model_validate(r.json()) for r in self.of("model/status")]

    def states(self) -> list[RobotState]:
        return [RobotState.model_validate(r.json()) for r in self.of("state")]

    async def wait(self, check: Callable[[], Any], timeout: float = 15.0) -> Any:
        """Wait until ``check()`` returns something truthy; returns it."""
        async with asyncio.timeout(timeout):
            while True:
                result = check()
                if result:
                    return result
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.2)

    async def answer(self, ref: str, timeout: float = 15.0) -> Event:
        """The final answer to a command: done, failed or rejected."""

        def final() -> Event | None:
            return next(
                (
                    e
                    for e in self.events()
                    if e.ref == ref and e.kind in {"done", "failed", "rejected"}
                ),
                None,
            )

        result: Event = await self.wait(final, timeout)
        return result

    async def status(self, version: str, state: str, timeout: float = 15.0) -> ModelStatus:
        def find() -> ModelStatus | None:
            return next(
                (s for s in self.statuses() if s.version == version and s.state == state), None
            )

        result: ModelStatus = await self.wait(find, timeout)
        return result


@contextlib.asynccontextmanager
async def operator(broker: BrokerHandle) -> AsyncIterator[Operator]:
    async with Operator(broker) as op:
        yield op


def preview_parts(item: Received) -> tuple[dict[str, Any], list[bytes]]:
    env = decode(item.payload)
    return env.header, env.parts


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_noise_frames(folder: Path, n: int, width: int, height: int) -> list[Path]:
    """``n`` PNG frames of random noise (they compress by area, which the byte ratio needs)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"frame{i:03d}.png"
        path.write_bytes(encode_png(noise(height, width, i)))
        paths.append(path)
    return paths
