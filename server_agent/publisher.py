"""Transfer Model: offer the robot's newest version, send it in chunks, resend what is missing.

What is sent is a delta from the model the robot runs when the server can make one
(``server_agent.payloads``), else the whole checkpoint; a robot that cannot use the delta
answers ``need_full`` and gets the checkpoint in the same transfer.

The newest registered version of a robot that is not the one it runs is offered (HMAC-signed
when ``model_key`` is set), gated first (``server_agent.gate``): a candidate worse than the
robot's current model on held-out labeled regions, or on old-domain frames beyond a tolerance,
is refused unless the command says ``force``. Chunks go out with bounded
concurrency; ``receiving`` statuses listing missing chunks are answered by resending them; the
robot's ``active`` ends the command. Every status a robot sends (and its retained state) is
recorded, so the registry knows which version runs where.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.classes import CLASS_NAMES
from common.config import Settings
from common.errors import CommandRejected, ProtocolError, StorageError
from common.hashing import hmac_sha256
from common.schemas import ChunkHeader, Command, ModelOffer, ModelStatus, RobotState, parse_json
from server_agent.gate import judge
from server_agent.outbox import Outbox
from server_agent.payloads import Payload, PayloadMaker
from server_agent.store import Store, VersionRow

logger = logging.getLogger(__name__)

#: Chunks in flight at once (aiomqtt warns above 10 pending publishes).
IN_FLIGHT = 8
#: A transfer fails when the robot says nothing for this long (it asks for resends every 2 s).
IDLE_TIMEOUT_S = 60.0


@dataclass
class _Transfer:
    robot_id: str
    command: Command
    row: VersionRow
    parent: str | None  # the version the robot runs: a delta's parent
    statuses: asyncio.Queue[ModelStatus] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class ModelPublisher:
    """Model offers, chunks and resends; one transfer per robot at a time."""

    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        settings: Settings,
        *,
        idle_timeout: float = IDLE_TIMEOUT_S,
        base_checkpoint: Path | None = None,
    ) -> None:
        self.store = store
        self.payloads = PayloadMaker(store, base_checkpoint, deltas=settings.server.delta_updates)
        self.outbox = outbox
        self.settings = settings
        self.idle_timeout = idle_timeout
        self._transfers: dict[str, _Transfer] = {}
        self._known_active: dict[str, str | None] = {}
        self._robot_started: dict[str, float] = {}  # each robot's process start, as it says

    # --- command ---------------------------------------------------------------------------
    async def start(self, rid: str, command: Command) -> None:
        if rid in self._transfers:
            busy = self._transfers[rid].row.version
            raise CommandRejected(f"model {busy} is being transferred to {rid}; wait for it")
        versions = await asyncio.to_thread(self.store.versions, rid)
        if not versions:
            raise CommandRejected(f"no new model for {rid}: run Start FineTune first")
        row = versions[0]
        # what the robot said last (set before the registry write completes, so a command
        # right after a robot's state sees it), else the registry
        active_version = (
            self._known_active[rid]
            if rid in self._known_active
            else (await asyncio.to_thread(self.store.robots)).get(rid)
        )
        if row.version == active_version:
            raise CommandRejected(f"no new model for {rid}: {row.version} is already active")
        force = command.args.get("force") is True
        active = next((v for v in versions if v.version == active_version), None)
        if active is None and active_version is not None:
            active = await asyncio.to_thread(self.store.version, active_version)
        # the job measured the candidate and its parent (the robot's model) on the same data
        current = row.metrics_before
        if active is not None and active.version != row.parent:
            current = active.metrics  # the robot runs another model (e.g. a rollback)
        server = self.settings.server
        verdict = judge(row.metrics, current, server.gate_urban_drop, server.gate_heldout_drop)
        gate = verdict.figures
        if server.gate and verdict.worse and not force:
            await self.outbox.event(
                "rejected",
                f"gate: {row.version} has "
                + "; ".join(verdict.reasons)
                + "; send with force to override",
                ref=command.id,
                cmd=command.cmd,
                robot_id=rid,
                data={"version": row.version, **gate},
            )
            return
        transfer = _Transfer(robot_id=rid, command=command, row=row, parent=active_version)
        self._transfers[rid] = transfer
        await self.outbox.accepted(
            command,
            rid,
            f"offering {row.version} ({row.bytes} bytes)" + (" (gate overridden)" if force else ""),
            version=row.version,
            forced=force,
            **gate,
        )
        transfer.task = asyncio.create_task(self._run(transfer), name=f"model-to-{rid}")

    async def close(self) -> None:
        tasks = [t.task for t in self._transfers.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the transfer ----------------------------------------------------------------------
    def _offer(self, row: VersionRow, payload: Payload, chunk_size: int) -> ModelOffer:
        delta = (
            {
                "encoding": "delta",
                "parent_version": payload.parent_version,
                "parent_sha256": payload.parent_sha256,
                "weights_sha256": payload.weights_sha256,
                "full_bytes": payload.full_bytes,
            }
            if payload.is_delta
            else {}
        )
        offer = ModelOffer(
            robot_id=row.robot_id,
            version=row.version,
            sha256=payload.sha256,
            bytes=len(payload.data),
            chunk_size=chunk_size,
            chunks=len(payload.chunks),
            arch=row.arch,
            dtype="fp16" if row.dtype == "fp16" else "fp32",
            classes=list(CLASS_NAMES),
            metrics=row.metrics,
            **delta,
        )
        if self.settings.model_key:
            signature = hmac_sha256(self.settings.model_key.encode(), offer.signed_fields())
            offer = offer.model_copy(update={"signature": signature})
        return offer

    async def _send_chunks(
        self, rid: str, version: str, payload: Payload, indices: list[int]
    ) -> None:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(index: int) -> None:
            async with gate:
                sha = payload.chunk_sha256[index]
                header = ChunkHeader(version=version, index=index, sha256=sha)
                await self.outbox.model_chunk(rid, header, payload.chunks[index])

        async with asyncio.TaskGroup() as group:
            for index in indices:
                group.create_task(one(index))

    async def _run(self, t: _Transfer) -> None:
        rid, row, command = t.robot_id, t.row, t.command
        start = time.monotonic()
        try:
            chunk_size = self.settings.server.chunk_size
            payload = await asyncio.to_thread(self.payloads.best, row, t.parent, chunk_size)
            await self._publish(rid, row, payload, chunk_size)
            delta_bytes = len(payload.data) if payload.is_delta else None
            resent = 0
            while True:
                try:
                    status = await asyncio.wait_for(t.statuses.get(), self.idle_timeout)
                except TimeoutError:
                    await self.outbox.failed(
                        command,
                        rid,
                        f"{rid} said nothing about {row.version} for {self.idle_timeout:.0f} s",
                        version=row.version,
                    )
                    return
                if status.state == "receiving" and status.missing:
                    wanted = sorted({i for i in status.missing if 0 <= i < len(payload.chunks)})
                    logger.info(
                        "robot %s: resending %d chunks of %s", rid, len(wanted), row.version
                    )
                    await self._send_chunks(rid, row.version, payload, wanted)
                    resent += len(wanted)
                elif status.state == "need_full" and payload.is_delta:
                    logger.info(
                        "robot %s: cannot use the delta of %s (%s); sending the checkpoint",
                        rid, row.version, status.error,
                    )  # fmt: skip
                    payload = await asyncio.to_thread(self.payloads.full, row, chunk_size)
                    await self._publish(rid, row, payload, chunk_size)
                elif status.state == "active":
                    await self.outbox.done(
                        command,
                        rid,
                        f"{rid} runs {row.version}"
                        + (f" (a {delta_bytes}-byte delta)" if payload.is_delta else ""),
                        version=row.version,
                        bytes=len(payload.data),
                        full_bytes=payload.full_bytes,
                        encoding="delta" if payload.is_delta else "full",
                        delta_bytes=delta_bytes,
                        chunks=len(payload.chunks),
                        resent=resent,
                        seconds=round(time.monotonic() - start, 3),
                    )
                    return
                elif status.state in ("rejected", "failed", "need_full"):
                    await self.outbox.failed(
                        command,
                        rid,
                        (
                            f"{rid} refused {row.version}"
                            if status.state == "rejected"
                            else f"transfer of {row.version} to {rid} failed"
                        )
                        + f": {status.error or status.state}",
                        version=row.version,
                        state=status.state,
                    )
                    return
        except (OSError, StorageError) as exc:
            await self.outbox.failed(command, rid, f"cannot send {row.version}: {exc}")
        except Exception:  # e.g. the broker gone for longer than a publish waits
            logger.exception("robot %s: transfer of %s failed", rid, row.version)
        finally:
            self._transfers.pop(rid, None)

    async def _publish(self, rid: str, row: VersionRow, payload: Payload, chunk_size: int) -> None:
        offer = self._offer(row, payload, chunk_size)
        await self.outbox.model_offer(rid, offer)
        await self._send_chunks(rid, row.version, payload, list(range(len(payload.chunks))))

    # --- what robots report ----------------------------------------------------------------
    async def on_status(self, rid: str, topic: str, payload: bytes) -> None:
        status = parse_json(ModelStatus, payload, where=topic)
        if status.robot_id != rid:
            raise ProtocolError(f"robot_id {status.robot_id!r} differs from the topic's {rid!r}")
        if status.state in ("active", "rolled_back"):
            await self._record(rid, status.version, status.state)
        transfer = self._transfers.get(rid)
        if transfer is not None and transfer.row.version == status.version:
            transfer.statuses.put_nowait(status)

    async def on_state(self, rid: str, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained state
        state = parse_json(RobotState, payload, where=topic)
        if state.robot_id != rid:
            raise ProtocolError(f"robot_id {state.robot_id!r} differs from the topic's {rid!r}")
        previous_start = self._robot_started.get(rid)
        self._robot_started[rid] = state.started
        transfer = self._transfers.get(rid)
        if transfer is not None and previous_start is not None and state.started != previous_start:
            # a new robot process: what the old one had received is gone, it will never report
            # on this transfer; end it now so a Transfer Model after the restart is not refused
            transfer.statuses.put_nowait(
                ModelStatus(
                    robot_id=rid,
                    version=transfer.row.version,
                    state="failed",
                    error="the robot restarted during the transfer",
                )
            )
        if state.model is not None:
            await self._record(rid, state.model.version, "state")
        elif rid not in self._known_active:
            await asyncio.to_thread(self.store.touch_robot, rid)
            self._known_active[rid] = None
            self.outbox.changed()

    async def _record(self, rid: str, version: str, how: str) -> None:
        if self._known_active.get(rid) == version and how == "state":
            return
        self._known_active[rid] = version
        await asyncio.to_thread(self.store.set_active, rid, version, how)
        logger.info("robot %s runs %s (%s)", rid, version, how)
        self.outbox.changed()
