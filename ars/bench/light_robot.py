"""Light robots: what a real robot sends, at a real robot's rates, without running a model.

One process hosts many (``python -m ars.bench.light_robot``); each one is, on the wire, a robot:
its own broker user (``robot-<rid>``) and client id (``ars-robot-<rid>``), the robot's
``MqttLink`` (will, link heartbeat, reconnects), its ``RobotOutbox`` for the retained state
(once a second, as a segmenting robot) and the previews (QoS 0, ``preview_fps``), and its
``DataTransfer`` for region transfers, so every envelope is encoded and acknowledged by the
robot's own code. The frames are a ``recording`` (previews and candidate regions the real code
made once), so the CPU a light robot costs is the publishing alone.

Transfers run on a schedule: every ``transfer_every_s`` each robot offers the candidates a real
robot would have stored meanwhile (``camera_fps / store_every`` a second) and its
``DataTransfer`` sends the ``select_ratio`` of them it selects, then waits for the server's
ack (``transfer_every_s`` 0: no transfers, previews and states alone). Robots start their
schedules spread over one period. Commands are not acted on.

On SIGTERM the host stops previews and new transfers, lets transfers in flight finish (or time
out), says goodbye (retained offline state) and writes what each robot sent and when (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt

from ars.bench.recording import Recording, load
from common.config import MqttSettings, RobotSettings
from common.envelope import encode
from common.errors import ArsError
from common.files import write_atomic
from common.mqtt import MqttLink
from common.schemas import ModelRef, PreviewHeader, RegionsAck, RobotState, new_id, parse_json
from common.topics import Topics
from robot_agent.candidates import Candidate
from robot_agent.outbox import RobotOutbox
from robot_agent.transfer import DataTransfer

logger = logging.getLogger(__name__)

SOURCE = "sim:rural"  # what the recording was made from, as a real robot's state says


@dataclass(frozen=True)
class Rates:
    """A real robot's rates (its settings' defaults unless given)."""

    preview_fps: float
    camera_fps: float
    candidates_per_s: float
    select_ratio: float
    selection: str
    transfer_every_s: float
    max_candidates: int  # the robot's candidate store's bound
    state_interval_s: float = 1.0

    @classmethod
    def of(cls, rs: RobotSettings, transfer_every_s: float) -> Rates:
        return cls(
            preview_fps=rs.preview_fps,
            camera_fps=rs.camera_fps,
            candidates_per_s=rs.camera_fps / rs.store_every,
            select_ratio=rs.select_ratio,
            selection=rs.selection,
            transfer_every_s=transfer_every_s,
            max_candidates=rs.max_candidates,
        )

    @property
    def candidates_per_transfer(self) -> int:
        return max(1, round(self.candidates_per_s * self.transfer_every_s))

    @property
    def regions_per_transfer(self) -> int:
        return math.ceil(self.select_ratio * self.candidates_per_transfer)

    @property
    def regions_per_s(self) -> float:
        every = self.transfer_every_s
        return self.regions_per_transfer / every if every > 0 else 0.0


class ReplayCandidates:
    """The ``robot_agent.transfer.Candidates`` a light robot transfers from: each window of
    candidates is the recorded ones again under fresh ids (in memory; nothing on disk).

    As in the robot's ``CandidateStore``, a candidate stays unsent until the server's ack
    names it (or the transfer drops it), so an unacknowledged transfer's regions go out again
    with the next one; past ``max_candidates`` the lowest scores are evicted."""

    def __init__(
        self, recorded: Sequence[tuple[Candidate, bytes, bytes]], max_candidates: int
    ) -> None:
        self._recorded = list(recorded)
        self.max_candidates = max_candidates
        self._next = 0
        self.reads = 0  # regions read to be published (DataTransfer reads each just before)
        self._window: dict[str, tuple[Candidate, bytes, bytes]] = {}
        #: Ids read to be published at least once (a resend reads the same id again).
        self.published: set[str] = set()
        #: Published ids evicted unacknowledged (the bounded store's choice, not the link's).
        self.evicted_published: set[str] = set()

    def fill(self, n: int) -> None:
        """``n`` new unsent candidates (what a robot stored since its last transfer)."""
        for _ in range(n):
            cand, crop, mask = self._recorded[self._next % len(self._recorded)]
            self._next += 1
            fresh = replace(cand, region_id=new_id(), ts=time.time())
            self._window[fresh.region_id] = (fresh, crop, mask)
        excess = len(self._window) - self.max_candidates
        if excess > 0:
            for cand in self.unsent()[-excess:]:
                del self._window[cand.region_id]
                if cand.region_id in self.published:
                    self.evicted_published.add(cand.region_id)

    def unsent(self) -> list[Candidate]:
        return sorted((c for c, _, _ in self._window.values()), key=lambda c: -c.score)

    def pending(self) -> list[str]:
        """Published ids still unsent: the next transfer sends them again."""
        return [rid for rid in self._window if rid in self.published]

    def read_parts(self, region_id: str) -> tuple[bytes, bytes]:
        _, crop, mask = self._window[region_id]
        self.reads += 1
        self.published.add(region_id)
        return crop, mask

    def mark_sent(self, region_ids: list[str]) -> None:
        for rid in region_ids:
            self._window.pop(rid, None)

    def delete(self, region_ids: list[str]) -> None:
        self.mark_sent(region_ids)


@dataclass
class TransferRecord:
    start: float  # wall clock, when the transfer began
    seconds: float | None  # first region published to the ack received; None: no ack
    selected: int = 0
    stored: int = 0
    rejected: int = 0
    error: str | None = None


@dataclass
class RobotLog:
    previews: list[float] = field(default_factory=list)  # wall clock of each preview sent
    transfers: list[TransferRecord] = field(default_factory=list)
    published: list[str] = field(default_factory=list)  # region ids, at the end
    pending: list[str] = field(default_factory=list)  # published, still unsent at the end
    evicted: list[str] = field(default_factory=list)  # published, evicted unacknowledged
    connections: int = 0
    commands: int = 0


class LightRobot:
    """One light robot; ``async with robot.link`` first, then ``run()`` until ``stopping``."""

    def __init__(
        self,
        rid: str,
        url: str,
        topics: Topics,
        recording: Recording,
        rates: Rates,
        *,
        offset_s: float,
        max_payload_bytes: int,
        ack_timeout_s: float = 15.0,
    ) -> None:
        self.rid = rid
        self.topics = topics
        self.recording = recording
        self.rates = rates
        self.offset_s = offset_s
        self.started = time.time()
        self.log = RobotLog()
        self.frames = 0
        self.stopping = asyncio.Event()
        self.candidates = ReplayCandidates(recording.regions, rates.max_candidates)
        self.model = ModelRef(**recording.model)
        t = topics
        gone = RobotState(robot_id=rid, online=False, source=SOURCE, started=self.started)
        will = aiomqtt.Will(t.robot_state(rid), gone.to_json(), qos=1, retain=True)
        self.link = MqttLink(
            MqttSettings(url=url),
            client_id=f"ars-robot-{rid}",
            subscriptions=[(t.robot_cmd(rid), 1), (t.robot_regions_ack(rid), 1)],
            will=will,
            on_connect=self._on_connect,
            max_inflight=16,
            heartbeat_topic=t.robot_heartbeat(rid),
        )
        self.outbox = RobotOutbox(self.link, t, rid, self._state)
        self.transfer = DataTransfer(
            link=self.link,
            topics=t,
            robot_id=rid,
            store=self.candidates,
            select_ratio=rates.select_ratio,
            select_rule=rates.selection,
            max_payload_bytes=max_payload_bytes,
            ack_timeout=ack_timeout_s,
        )

    def _state(self, *, online: bool = True) -> RobotState:
        return RobotState(
            robot_id=self.rid,
            online=online,
            segmenting=online,
            source=SOURCE,
            model=self.model,
            fps=self.rates.camera_fps if online else 0.0,
            frames=self.frames,
            candidates=len(self.candidates.unsent()),
            unsent_candidates=len(self.candidates.unsent()),
            bytes_sent=self.transfer.bytes_sent_total,
            started=self.started,
        )

    async def _on_connect(self, link: MqttLink) -> None:
        self.log.connections += 1
        await self.outbox.state()

    async def run(self) -> None:
        """Until ``stopping`` is set and the transfer in flight has finished."""
        tasks = [
            asyncio.create_task(c) for c in (self._dispatch(), self._states(), self._previews())
        ]
        try:
            await self._transfers()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _dispatch(self) -> None:
        ack_topic = self.topics.robot_regions_ack(self.rid)
        async for topic, payload in self.link.messages():
            if topic != ack_topic:
                self.log.commands += 1
                continue
            try:
                self.transfer.on_ack(parse_json(RegionsAck, payload, where=topic))
            except ArsError as exc:
                logger.warning("light robot %s: bad ack on %s: %s", self.rid, topic, exc)

    async def _states(self) -> None:
        while True:
            await asyncio.sleep(self.rates.state_interval_s)
            self.frames += round(self.rates.camera_fps * self.rates.state_interval_s)
            if self.link.connected.is_set():
                await self.outbox.state()

    async def _previews(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rates.preview_fps
        await asyncio.sleep(self.offset_s % period)
        start, seq = loop.time(), 0
        while True:
            rec = self.recording.previews[seq % len(self.recording.previews)]
            header = PreviewHeader(
                robot_id=self.rid, frame_id=f"light-{seq:08d}", fps=self.rates.camera_fps,
                **rec.header,
            )  # fmt: skip
            await self.outbox.preview(encode(header.model_dump(mode="json"), [rec.jpeg, rec.png]))
            self.log.previews.append(time.time())
            seq += 1
            await asyncio.sleep(max(0.0, start + seq * period - loop.time()))

    async def _transfers(self) -> None:
        loop = asyncio.get_running_loop()
        every = self.rates.transfer_every_s
        if every <= 0:
            await self.stopping.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), self.offset_s)
        start, k = loop.time(), 0
        while not self.stopping.is_set():
            self.candidates.fill(self.rates.candidates_per_transfer)
            record = TransferRecord(start=time.time(), seconds=None)
            t0, reads = time.perf_counter(), self.candidates.reads
            try:
                report = await self.transfer.run()
            except (ArsError, TimeoutError) as exc:  # no ack; or the broker took no publish
                record.error = f"{exc.__class__.__name__}: {exc}"
            except asyncio.CancelledError:  # the host's shutdown grace ran out
                record.error = "cancelled at shutdown"
                raise
            else:
                record.seconds = time.perf_counter() - t0
                record.stored, record.rejected = report.regions, len(report.rejected)
            finally:
                record.selected = self.candidates.reads - reads
                self.log.transfers.append(record)
            await self.outbox.state()  # as a robot does after each transfer
            k += 1
            wait = max(0.0, start + k * every - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)

    async def goodbye(self) -> None:
        await self.outbox.goodbye(self._state(online=False))

    def final_log(self) -> RobotLog:
        """The log with the region accounting of the end (after the last transfer)."""
        c = self.candidates
        self.log.published = sorted(c.published)
        self.log.pending = c.pending()
        self.log.evicted = sorted(c.evicted_published)
        return self.log


async def host(
    robots: dict[str, str],
    topics: Topics,
    recording: Recording,
    rates: Rates,
    *,
    stats: Path,
    ready: Path,
    max_payload_bytes: int,
    connect_timeout_s: float = 120.0,
    shutdown_grace_s: float = 20.0,
) -> None:
    """Run ``robots`` (id -> broker URL) until SIGTERM; write ``stats`` at the end."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    n, spread = len(robots), max(rates.transfer_every_s, 1.0)
    fleet = [
        LightRobot(rid, url, topics, recording, rates, offset_s=spread * i / n,
                   max_payload_bytes=max_payload_bytes)
        for i, (rid, url) in enumerate(sorted(robots.items()))
    ]  # fmt: skip
    async with AsyncExitStack() as stack:
        for robot in fleet:
            await stack.enter_async_context(robot.link)
        await asyncio.wait_for(
            asyncio.gather(*(r.link.wait_connected() for r in fleet)), connect_timeout_s
        )
        tasks = [asyncio.create_task(r.run(), name=f"light-{r.rid}") for r in fleet]
        write_atomic(ready, str(time.time()).encode(), durable=False)
        await stop.wait()
        for robot in fleet:
            robot.stopping.set()
        # transfers in flight finish (ack or ack timeout) within the grace, else are cancelled
        _, late = await asyncio.wait(tasks, timeout=shutdown_grace_s)
        for task in late:
            task.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for robot, outcome in zip(fleet, done, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                logger.error("light robot %s ended: %r", robot.rid, outcome)
        await asyncio.gather(*(r.goodbye() for r in fleet))
    out: dict[str, Any] = {r.rid: asdict(r.final_log()) for r in fleet}
    write_atomic(stats, json.dumps(out).encode(), durable=False)


def main(argv: Sequence[str] | None = None) -> None:
    from common.logsetup import setup_logging

    p = argparse.ArgumentParser(description="host light robots until SIGTERM")
    p.add_argument("--robots", type=Path, required=True, help="JSON file: robot id -> broker URL")
    p.add_argument("--recording", type=Path, required=True)
    p.add_argument("--prefix", default="ars")
    p.add_argument("--transfer-every", type=float, default=10.0)
    p.add_argument("--max-payload-bytes", type=int, default=MqttSettings().max_payload_bytes)
    p.add_argument("--stats", type=Path, required=True)
    p.add_argument("--ready", type=Path, required=True)
    args = p.parse_args(argv)
    setup_logging("WARNING")
    robots = json.loads(args.robots.read_text(encoding="utf-8"))
    asyncio.run(
        host(
            robots, Topics(args.prefix), load(args.recording),
            Rates.of(RobotSettings(), args.transfer_every), stats=args.stats, ready=args.ready,
            max_payload_bytes=args.max_payload_bytes,
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
