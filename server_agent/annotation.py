"""Start/Stop Annotation and the annotation editor's requests (list, get, submit, skip).

A session covers one robot's regions not yet labeled when it opened (and the ones arriving
while it is open), hardest first. The session lives in the store, so it and every saved
annotation survive a restart. A submitted mask is checked (8-bit PNG, the region's size,
trainIds 0..18 or 255) before anything is written; a refused one leaves stored data untouched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from common.classes import IGNORE, NUM_CLASSES
from common.errors import CommandRejected, ProtocolError
from common.ids import check_id
from common.images import check_mask, decode_mask, encode_png
from common.schemas import AnnotationSession, Command
from server_agent.outbox import Outbox
from server_agent.store import RegionRow, Store

logger = logging.getLogger(__name__)

SESSION_KEY = "annotation_session"
MAX_LISTED = 2000


def validate_annotation(row: RegionRow, mask_png: bytes) -> tuple[bytes, int]:
    """(normalised 8-bit PNG, labeled pixel count); ProtocolError with the reason if refused."""
    _, _, w, h = row.box
    mask = decode_mask(mask_png, what="annotation")
    check_mask(mask, shape=(h, w), num_classes=NUM_CLASSES, what="annotation")
    labeled = int(np.count_nonzero(mask != IGNORE))
    if labeled == 0:
        raise ProtocolError("annotation labels no pixel (all 255); skip the region instead")
    return encode_png(np.ascontiguousarray(mask, dtype=np.uint8)), labeled


class Annotation:
    """The annotation session and the requests that read regions and save labels."""

    def __init__(self, store: Store, outbox: Outbox) -> None:
        self.store = store
        self.outbox = outbox

    # --- the session (sync: called from worker threads) ------------------------------------
    def _load(self) -> dict[str, Any]:
        raw = self.store.get_meta(SESSION_KEY)
        return raw if isinstance(raw, dict) else {"open": False, "robot_id": None, "ids": []}

    def session(self) -> AnnotationSession:
        raw = self._load()
        if not raw.get("open"):
            return AnnotationSession(open=False, robot_id=raw.get("robot_id"))
        ids = set(raw.get("ids", []))
        rows = self.store.list_regions(raw["robot_id"], ids=list(ids))
        return AnnotationSession(
            open=True,
            robot_id=raw["robot_id"],
            total=len(rows),
            done=sum(1 for r in rows if r.annotated or r.skipped),
        )

    def region_stored(self, robot_id: str, region_id: str) -> None:
        """A region that arrives while its robot's session is open joins the session."""
        raw = self._load()
        if raw.get("open") and raw.get("robot_id") == robot_id:
            raw["ids"] = [*raw.get("ids", []), region_id]
            self.store.set_meta(SESSION_KEY, raw)

    # --- commands --------------------------------------------------------------------------
    async def start(self, rid: str, command: Command) -> None:
        raw = await asyncio.to_thread(self._load)
        if raw.get("open"):
            raise CommandRejected(
                f"an annotation session is already open for {raw.get('robot_id')}; stop it first"
            )
        rows = await asyncio.to_thread(self.store.list_regions, rid)
        todo = [r.region_id for r in rows if not r.annotated and not r.skipped]
        if not todo:
            raise CommandRejected(
                f"no unlabeled regions from {rid}: run Transfer Data first "
                f"({len(rows)} stored, all labeled or skipped)"
            )
        await self.outbox.accepted(command, rid, "annotation session opening")
        await asyncio.to_thread(
            self.store.set_meta, SESSION_KEY, {"open": True, "robot_id": rid, "ids": todo}
        )
        self.outbox.changed()
        await self.outbox.done(
            command, rid, f"annotation session open: {len(todo)} regions, hardest first",
            total=len(todo),
        )  # fmt: skip

    async def stop(self, rid: str, command: Command) -> None:
        raw = await asyncio.to_thread(self._load)
        if not raw.get("open"):
            raise CommandRejected("no annotation session is open")
        if raw.get("robot_id") != rid:
            raise CommandRejected(f"the open annotation session is for {raw.get('robot_id')}")
        await self.outbox.accepted(command, rid, "closing the annotation session")
        session = await asyncio.to_thread(self.session)
        labeled = len(await asyncio.to_thread(self.store.labeled_regions, rid))
        await asyncio.to_thread(
            self.store.set_meta, SESSION_KEY, {"open": False, "robot_id": rid, "ids": []}
        )
        self.outbox.changed()
        await self.outbox.done(
            command,
            rid,
            f"annotation session closed: {session.done} of {session.total} done; "
            f"{labeled} labeled regions form the training set",
            total=session.total,
            done=session.done,
            labeled=labeled,
        )

    # --- requests --------------------------------------------------------------------------
    def list_regions(self, args: dict[str, Any]) -> dict[str, Any]:
        """Regions of ``robot_id`` (default: the open session's, else all), hardest first."""
        raw = self._load()
        robot_id = args.get("robot_id")
        if robot_id is not None:
            rows = self.store.list_regions(check_id(robot_id, "robot id"))
        elif raw.get("open"):
            rows = self.store.list_regions(raw["robot_id"], ids=raw.get("ids", []))
        else:
            rows = self.store.list_regions()
        limit = args.get("limit", MAX_LISTED)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_LISTED:
            raise ProtocolError(f"limit must be an integer in 1..{MAX_LISTED}")
        return {
            "regions": [r.summary() for r in rows[:limit]],
            "total": len(rows),
            "session": self.session().model_dump(mode="json"),
        }

    def _row(self, args: dict[str, Any]) -> RegionRow:
        region_id = check_id(args.get("region_id"), "region id")
        row = self.store.get_region(region_id)
        if row is None:
            raise ProtocolError(f"region {region_id} is not stored")
        return row

    def get_region(self, args: dict[str, Any]) -> tuple[RegionRow, list[bytes]]:
        row = self._row(args)
        return row, list(self.store.read_region(row))

    def submit(self, args: dict[str, Any], parts: list[bytes]) -> dict[str, Any]:
        """Validate and store a label (one PNG part) or a skip (``skip: true``, no part)."""
        row = self._row(args)
        if args.get("skip") is True:
            self.store.save_annotation(row, None)
            logger.info("region %s skipped", row.region_id)
            return {"region_id": row.region_id, "skipped": True, "labeled_pixels": 0}
        if len(parts) != 1:
            raise ProtocolError(f"submit_annotation needs one part (mask PNG), got {len(parts)}")
        png, labeled = validate_annotation(row, parts[0])
        self.store.save_annotation(row, png, labeled_pixels=labeled)
        logger.info("region %s labeled (%d pixels)", row.region_id, labeled)
        return {"region_id": row.region_id, "skipped": False, "labeled_pixels": labeled}
