"""Regions for the annotation editor: a short-lived cache of ``get_region`` answers and the
conversion of the browser's mask PNG into the 8-bit greyscale PNG the server expects.

A browser loads three images per region (crop, predicted mask, saved annotation); the cache
turns that into one ``get_region`` request, and concurrent loads share the one in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from common.classes import IGNORE, NUM_CLASSES
from common.errors import ProtocolError
from common.images import check_mask_png, decode_rgb, encode_png
from web.relay import Relay, ReplyMessage

PARTS = {"crop": 0, "pred": 1, "annotation": 2}


class RegionCache:
    """``get_region`` answers kept ``ttl_s`` seconds, at most ``size`` of them."""

    def __init__(self, relay: Relay, *, ttl_s: float = 30.0, size: int = 32) -> None:
        self.relay = relay
        self.ttl_s = ttl_s
        self.size = size
        self._items: OrderedDict[str, tuple[float, ReplyMessage]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[ReplyMessage]] = {}

    async def get(self, region_id: str) -> ReplyMessage:
        hit = self._items.get(region_id)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        task = self._inflight.get(region_id)
        if task is None:
            task = asyncio.create_task(self.relay.request("get_region", {"region_id": region_id}))
            self._inflight[region_id] = task
            task.add_done_callback(lambda _t: self._inflight.pop(region_id, None))
        answer = await asyncio.shield(task)
        if answer.ok:
            self._items[region_id] = (time.monotonic(), answer)
            self._items.move_to_end(region_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return answer

    def invalidate(self, region_id: str) -> None:
        self._items.pop(region_id, None)


def region_summary(region_id: str, answer: ReplyMessage) -> dict[str, Any]:
    """What the browser needs about a region, with the URLs of its three images."""
    base = f"/api/regions/{region_id}"
    has_annotation = len(answer.parts) > 2 and bool(answer.parts[2])
    return {
        "region_id": region_id,
        "region": answer.header.get("region", {}),
        "annotated": bool(answer.header.get("annotated")),
        "crop_url": f"{base}/crop.png",
        "pred_url": f"{base}/pred.png",
        "annotation_url": f"{base}/annotation.png" if has_annotation else None,
    }


def browser_mask_to_png(data: bytes, *, max_pixels: int = 4096 * 4096) -> tuple[bytes, int, int]:
    """A canvas PNG (RGB(A) with R == G == B == label, or greyscale) -> mode L PNG.

    Returns (png, width, height). ProtocolError names what is wrong: not an 8-bit PNG (16-bit
    samples are refused, not clipped), colour pixels (R, G, B differ), or class ids outside
    0..18 and 255.
    """
    check_mask_png(data, what="annotation mask")
    rgb = decode_rgb(data, what="annotation mask", max_pixels=max_pixels)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if not (np.array_equal(r, g) and np.array_equal(r, b)):
        raise ProtocolError("annotation mask: pixels must be grey (R == G == B == class id)")
    mask = np.ascontiguousarray(r)
    bad = np.unique(mask[(mask >= NUM_CLASSES) & (mask != IGNORE)])
    if bad.size:
        raise ProtocolError(f"annotation mask: unknown class ids {bad.tolist()[:8]}")
    return encode_png(mask), mask.shape[1], mask.shape[0]
