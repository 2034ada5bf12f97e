"""Transfer Data: send the hardest regions of the frames processed since the last transfer.

Among the unsent candidates (n of them) the top ``ceil(select_ratio * n)`` by score go out, one
QoS 1 region envelope each, then a manifest. The server answers ``RegionsAck``; only the ids it
stored are marked sent. The window's unselected candidates (and the ones the server rejected:
resending them would be refused again) are dropped; selected ids the ack does not mention stay
unsent for the next transfer. Without an ack in ``ack_timeout`` nothing is marked.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.envelope import encode
from common.errors import StorageError, TransferError
from common.mqtt import MqttLink
from common.schemas import RegionHeader, RegionsAck, TransferManifest, new_id
from common.topics import Topics
from models.selection import select_diverse, select_stratified, select_top
from robot_agent.candidates import Candidate

logger = logging.getLogger(__name__)


class Candidates(Protocol):
    """What a transfer reads and marks: the robot's ``CandidateStore``, or the light robots'
    replayed candidates (``ars.bench.light_robot``), which send through this same code."""

    def unsent(self) -> list[Candidate]: ...

    def read_parts(self, region_id: str) -> tuple[bytes, bytes]: ...

    def mark_sent(self, region_ids: list[str]) -> None: ...

    def delete(self, region_ids: list[str]) -> None: ...


@dataclass(frozen=True)
class TransferReport:
    """The figures of one transfer (the ``done`` event's data)."""

    transfer_id: str
    regions: int
    bytes_sent: int
    full_frames_bytes: int
    frames_considered: int
    selected: int
    image_bytes: int
    rejected: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.bytes_sent / self.full_frames_bytes if self.full_frames_bytes else 0.0

    def data(self) -> dict[str, Any]:
        return {
            "transfer_id": self.transfer_id,
            "regions": self.regions,
            "bytes_sent": self.bytes_sent,
            "full_frames_bytes": self.full_frames_bytes,
            "ratio": round(self.ratio, 6),
            "frames_considered": self.frames_considered,
            "selected": self.selected,
            "image_bytes": self.image_bytes,
            "rejected": self.rejected,
        }


def select(candidates: list[Candidate], ratio: float, rule: str = "top") -> list[Candidate]:
    """``ceil(ratio * n)`` candidates by ``models.selection``, the rules the adaptation
    benchmark measures. "top": the highest scores (the paper's; ties: older first). "diverse":
    hardest first, no two within 1/ratio frames of each other (in processing order) while the
    hardest allow it, so near-duplicate frames of one stretch of road do not fill the budget.
    "stratified": the candidates since the last transfer cut into as many equal runs (in
    processing order) as the budget, the hardest of each."""
    oldest_first = sorted(candidates, key=lambda c: c.ts)
    scores = [c.score for c in oldest_first]
    if rule == "diverse":
        picked = select_diverse(scores, ratio, range(len(scores)), 1.0 / ratio)
    elif rule == "stratified":
        picked = select_stratified(scores, ratio)
    elif rule == "top":
        picked = select_top(scores, ratio)
    else:
        raise ValueError(f"selection rule must be 'top', 'diverse' or 'stratified', got {rule!r}")
    return [oldest_first[i] for i in picked]


def full_frames_bytes(candidates: list[Candidate]) -> int:
    """Cost of sending every considered frame whole in the crops' encoding: n x mean crop PNG
    bytes x frame area / crop area (each candidate's own area ratio when frames differ)."""
    return round(sum(c.crop_bytes * c.area_ratio for c in candidates))


class DataTransfer:
    """One transfer at a time; acks are delivered by the agent's dispatcher via ``on_ack``."""

    def __init__(
        self,
        *,
        link: MqttLink,
        topics: Topics,
        robot_id: str,
        store: Candidates,
        select_ratio: float,
        max_payload_bytes: int,
        select_rule: str = "top",
        ack_timeout: float = 15.0,
    ) -> None:
        self.link = link
        self.topics = topics
        self.robot_id = robot_id
        self.store = store
        self.select_ratio = select_ratio
        self.select_rule = select_rule
        self.max_payload_bytes = max_payload_bytes
        self.ack_timeout = ack_timeout
        self._pending: dict[str, asyncio.Future[RegionsAck]] = {}
        self.bytes_sent_total = 0

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def on_ack(self, ack: RegionsAck) -> bool:
        """Deliver an ack; False when no transfer waits for it (late or duplicate)."""
        future = self._pending.get(ack.transfer_id)
        if future is None or future.done():
            return False
        future.set_result(ack)
        return True

    async def run(self) -> TransferReport:
        considered = await asyncio.to_thread(self.store.unsent)
        if not considered:
            raise TransferError("no candidates since the last transfer")
        chosen = select(considered, self.select_ratio, self.select_rule)
        transfer_id = new_id()
        topic = self.topics.robot_regions(self.robot_id)
        future: asyncio.Future[RegionsAck] = asyncio.get_running_loop().create_future()
        self._pending[transfer_id] = future
        try:
            sent_ids: list[str] = []
            bytes_sent = image_bytes = 0
            for cand in chosen:
                payload = await self._region_payload(transfer_id, cand)
                if payload is None:
                    continue
                await self.link.publish(topic, payload, qos=1)
                sent_ids.append(cand.region_id)
                bytes_sent += len(payload)
                image_bytes += cand.crop_bytes
            full = full_frames_bytes(considered)
            manifest = TransferManifest(
                robot_id=self.robot_id,
                transfer_id=transfer_id,
                region_ids=sent_ids,
                frames_considered=len(considered),
                bytes_sent=bytes_sent,
                full_frames_bytes=full,
            )
            await self.link.publish(topic, encode(manifest.model_dump(mode="json")), qos=1)
            self.bytes_sent_total += bytes_sent
            try:
                ack = await asyncio.wait_for(future, self.ack_timeout)
            except TimeoutError as exc:
                raise TransferError(
                    f"no RegionsAck for transfer {transfer_id} within {self.ack_timeout:g} s; "
                    "nothing marked sent"
                ) from exc
        finally:
            self._pending.pop(transfer_id, None)
        stored = [i for i in sent_ids if i in set(ack.stored)]
        rejected = {i: r for i, r in ack.rejected.items() if i in set(sent_ids)}
        chosen_ids = {c.region_id for c in chosen}
        dropped = [c.region_id for c in considered if c.region_id not in chosen_ids]
        await asyncio.to_thread(self.store.mark_sent, stored)
        await asyncio.to_thread(self.store.delete, dropped + list(rejected))
        logger.info(
            "robot %s: transfer %s: %d/%d regions stored, %d bytes (full frames %d)",
            self.robot_id, transfer_id, len(stored), len(sent_ids), bytes_sent, full,
        )  # fmt: skip
        return TransferReport(
            transfer_id=transfer_id,
            regions=len(stored),
            bytes_sent=bytes_sent,
            full_frames_bytes=full,
            frames_considered=len(considered),
            selected=len(sent_ids),
            image_bytes=image_bytes,
            rejected=rejected,
        )

    async def _region_payload(self, transfer_id: str, cand: Candidate) -> bytes | None:
        try:
            crop, mask = await asyncio.to_thread(self.store.read_parts, cand.region_id)
        except StorageError as exc:
            logger.warning("robot %s: region %s skipped: %s", self.robot_id, cand.region_id, exc)
            return None
        header = RegionHeader(
            robot_id=self.robot_id,
            transfer_id=transfer_id,
            region_id=cand.region_id,
            frame_id=cand.frame_id,
            score=cand.score,
            mean_entropy=cand.mean_entropy,
            region_entropy=cand.region_entropy,
            box=cand.box,
            frame_size=cand.frame_size,
            model_version=cand.model_version,
            ts=cand.ts,
        )
        payload = encode(header.model_dump(mode="json"), [crop, mask])
        if len(payload) > self.max_payload_bytes:
            logger.warning(
                "robot %s: region %s is %d bytes, over the %d-byte limit; skipped",
                self.robot_id, cand.region_id, len(payload), self.max_payload_bytes,
            )  # fmt: skip
            return None
        return payload
