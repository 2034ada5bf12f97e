"""Region intake (Transfer Data, server side): validate, deduplicate, store, acknowledge.

Each region envelope is checked before anything is written (schema, ids, the robot of the
topic, PNG decode with a pixel limit, crop and mask sizes equal to the box, mask classes), then
stored under ``regions/<robot>/<region_id>/``. A region id already stored is acknowledged again
without touching it, so QoS 1 redelivery is harmless. The manifest closing a transfer is
answered with ``RegionsAck``: the manifest's ids now stored, and the refused ones with reasons.
Region files are not fsynced one by one (3.6 ms each, two a region, would cap the intake at
~110 regions/s); one ``syncfs`` before the ack makes the whole transfer durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from common.classes import NUM_CLASSES
from common.envelope import decode
from common.errors import ArsError, ProtocolError, StorageError
from common.ids import is_safe_id
from common.images import check_mask, decode_mask, decode_rgb
from common.schemas import RegionHeader, RegionsAck, TransferManifest, validate
from server_agent.outbox import Outbox
from server_agent.store import Store

logger = logging.getLogger(__name__)

#: Refusal reasons are kept for this many recent transfers (for their manifests' acks).
KEEP_TRANSFERS = 64


def check_region(header: RegionHeader, crop_png: bytes, mask_png: bytes) -> None:
    """ProtocolError when the images do not decode or do not fit the header's box."""
    x, y, w, h = header.box
    fw, fh = header.frame_size
    if fw <= 0 or fh <= 0 or x + w > fw or y + h > fh:
        raise ProtocolError(f"box {list(header.box)} lies outside the frame {fw}x{fh}")
    crop = decode_rgb(crop_png, what="region crop")
    if crop.shape[:2] != (h, w):
        raise ProtocolError(f"crop is {crop.shape[1]}x{crop.shape[0]}, the box is {w}x{h}")
    mask = decode_mask(mask_png, what="predicted mask")
    check_mask(mask, shape=(h, w), num_classes=NUM_CLASSES, what="predicted mask")


class RegionIntake:
    """Handles ``ars/robots/{rid}/regions``: region envelopes, then a manifest."""

    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        *,
        max_payload_bytes: int,
        max_regions: int,
        on_stored: Callable[[str, str], None] | None = None,
    ) -> None:
        """``on_stored(robot_id, region_id)`` runs in a worker thread after each new region."""
        self.store = store
        self.on_stored = on_stored
        self.outbox = outbox
        self.max_payload_bytes = max_payload_bytes
        self.max_regions = max_regions
        self._refused: OrderedDict[str, dict[str, str]] = OrderedDict()

    def _refuse(self, transfer_id: str, region_id: str, reason: str) -> None:
        self._refused.setdefault(transfer_id, {})[region_id] = reason
        self._refused.move_to_end(transfer_id)
        while len(self._refused) > KEEP_TRANSFERS:
            self._refused.popitem(last=False)

    async def handle(self, rid: str, topic: str, payload: bytes) -> None:
        env = decode(payload, max_bytes=self.max_payload_bytes)
        kind = env.header.get("type")
        if kind == "manifest":
            manifest = validate(TransferManifest, env.header, where=topic)
            if manifest.robot_id != rid:
                raise ProtocolError(f"manifest robot_id {manifest.robot_id!r} differs from {rid!r}")
            await self._ack(manifest, topic)
            return
        if kind != "region":
            raise ProtocolError(f"envelope type {kind!r} is neither 'region' nor 'manifest'")
        header = validate(RegionHeader, env.header, where=topic)
        try:
            if header.robot_id != rid:
                raise ProtocolError(
                    f"robot_id {header.robot_id!r} differs from the topic's {rid!r}"
                )
            if len(env.parts) != 2:
                raise ProtocolError(f"region needs 2 parts (crop, mask), got {len(env.parts)}")
            await self._store(header, env.parts[0], env.parts[1])
        except StorageError as exc:
            # the server's disk, not the region: left out of the ack, so the robot keeps it
            # unsent and sends it again with its next transfer (rejected ids it deletes)
            raise StorageError(f"region {header.region_id} not stored: {exc}") from exc
        except ArsError as exc:
            self._refuse(header.transfer_id, header.region_id, str(exc))
            raise ProtocolError(f"region {header.region_id} refused: {exc}") from exc

    async def _store(self, header: RegionHeader, crop_png: bytes, mask_png: bytes) -> None:
        if await asyncio.to_thread(self._store_blocking, header, crop_png, mask_png):
            logger.info("robot %s: region %s stored", header.robot_id, header.region_id)
            self.outbox.changed()

    def _store_blocking(self, header: RegionHeader, crop_png: bytes, mask_png: bytes) -> bool:
        """Check and store one region in one worker-thread hop; True when it is new."""
        owner = self.store.region_owner(header.region_id)
        if owner is not None and owner != header.robot_id:
            raise ProtocolError(f"region id {header.region_id} belongs to robot {owner}")
        if owner is None:
            total, _ = self.store.counts()
            if total >= self.max_regions:
                raise StorageError(f"the region store is full ({total} of {self.max_regions})")
        check_region(header, crop_png, mask_png)
        if not self.store.add_region(header, crop_png, mask_png):
            logger.debug("region %s already stored (redelivery)", header.region_id)
            return False
        self.store.touch_robot(header.robot_id)
        if self.on_stored is not None:
            self.on_stored(header.robot_id, header.region_id)
        return True

    async def _ack(self, manifest: TransferManifest, topic: str) -> None:
        # the transfer's regions were written without an fsync each: one sync makes them
        # durable before the ack lets the robot forget them (a failure: no ack, it resends)
        await asyncio.to_thread(self.store.sync)
        refused = self._refused.get(manifest.transfer_id, {})
        stored: list[str] = []
        rejected: dict[str, str] = {}
        for region_id in manifest.region_ids:
            if not is_safe_id(region_id):
                rejected[region_id] = "invalid region id"
                continue
            owner = await asyncio.to_thread(self.store.region_owner, region_id)
            if owner == manifest.robot_id:
                stored.append(region_id)
            elif region_id in refused:
                rejected[region_id] = refused[region_id]
            elif owner is not None:
                rejected[region_id] = f"region id belongs to robot {owner}"
            # neither stored nor refused: never arrived; left out so the robot keeps it unsent
        ack = RegionsAck(
            robot_id=manifest.robot_id,
            transfer_id=manifest.transfer_id,
            stored=stored,
            rejected=rejected,
        )
        await self.outbox.regions_ack(ack)
        await self.outbox.event(
            "info",
            f"transfer {manifest.transfer_id} from {manifest.robot_id}: {len(stored)} regions "
            f"stored, {len(rejected)} rejected",
            robot_id=manifest.robot_id,
            data={
                "transfer_id": manifest.transfer_id,
                "stored": len(stored),
                "rejected": rejected,
                "bytes_sent": manifest.bytes_sent,
                "full_frames_bytes": manifest.full_frames_bytes,
                "frames_considered": manifest.frames_considered,
            },
        )
        self.outbox.changed()
