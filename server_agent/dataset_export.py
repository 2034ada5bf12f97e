"""The server's labeled regions as a Cityscapes-style data set, so the labels train elsewhere.

Layout under the export folder (``ROBOT`` is the robot id, ``REGION`` the region id)::

    leftImg8bit/train/ROBOT/REGION_leftImg8bit.png         the RGB crop, as the robot sent it
    gtFine/train/ROBOT/REGION_gtFine_labelTrainIds.png     8-bit trainIds, 255 outside the labels
    gtFine/train/ROBOT/REGION_gtFine_color.png             the same, in the Cityscapes palette
    index.json                                             one entry per region, written last

The trainIds and colours are Cityscapes' 19 classes (``simulator.palette``), so a Cityscapes
data loader reads the pairs unchanged. Every file is written atomically and ``index.json``
last: a folder with an index holds every pair it lists. A region whose stored files are
unreadable or whose label is not a valid trainId mask is left out and listed under
``skipped`` with the reason; the others are exported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from common.classes import CLASS_NAMES, IGNORE, PALETTE, colorize
from common.errors import ArsError, ConfigError
from common.files import write_atomic
from common.images import check_mask, decode_mask, decode_rgb, encode_png
from server_agent.store import RegionRow, Store

logger = logging.getLogger(__name__)

FORMAT: Final = "ars-cityscapes-1"
SPLIT: Final = "train"


@dataclass
class ExportSummary:
    """What an export wrote."""

    folder: Path
    regions: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def since_time(store: Store, version: str | None) -> float | None:
    """The creation time of ``version`` (labels after it are new to it); ConfigError if unknown."""
    if version is None:
        return None
    row = store.version(version)
    if row is None:
        known = ", ".join(v.version for v in store.versions()[:10]) or "none"
        raise ConfigError(f"--since {version!r}: no such model version (newest: {known})")
    return row.created


def _pair(store: Store, row: RegionRow) -> tuple[np.ndarray, np.ndarray]:
    crop_png, _, label_png = store.read_region(row)
    if not label_png:
        raise ArsError("its annotation file is missing")
    crop = decode_rgb(crop_png, what=f"region {row.region_id} crop")
    label = decode_mask(label_png, what=f"region {row.region_id} annotation")
    _, _, w, h = row.box
    check_mask(label, shape=(h, w), num_classes=len(CLASS_NAMES), what="annotation")
    if crop.shape[:2] != label.shape:
        raise ArsError(f"crop {crop.shape[1]}x{crop.shape[0]} and label differ in size")
    return crop, label


def export_dataset(
    store: Store, folder: Path, *, robot_id: str | None = None, since: str | None = None
) -> ExportSummary:
    """Write every labeled region (of ``robot_id``; labeled after model ``since`` was made)."""
    after = since_time(store, since)
    labeled = store.annotation_times()
    rows = [r for r in store.list_regions(robot_id) if r.annotated and r.region_id in labeled]
    if after is not None:
        rows = [r for r in rows if labeled[r.region_id][0] > after]
    rows.sort(key=lambda r: (r.robot_id, labeled[r.region_id][0], r.region_id))
    summary = ExportSummary(folder)
    for row in rows:
        try:
            crop, label = _pair(store, row)
        except ArsError as exc:
            logger.warning("export: region %s left out: %s", row.region_id, exc)
            summary.skipped.append({"region_id": row.region_id, "reason": str(exc)})
            continue
        stem = f"{row.robot_id}/{row.region_id}"
        paths = {
            "image": f"leftImg8bit/{SPLIT}/{stem}_leftImg8bit.png",
            "label": f"gtFine/{SPLIT}/{stem}_gtFine_labelTrainIds.png",
            "color": f"gtFine/{SPLIT}/{stem}_gtFine_color.png",
        }
        write_atomic(folder / paths["image"], encode_png(crop, compress_level=6))
        write_atomic(folder / paths["label"], encode_png(label, compress_level=6))
        write_atomic(folder / paths["color"], encode_png(colorize(label), compress_level=6))
        when, pixels = labeled[row.region_id]
        summary.regions.append(
            {
                "region_id": row.region_id,
                "robot_id": row.robot_id,
                "frame_id": row.frame_id,
                "box": list(row.box),
                "frame_size": list(row.frame_size),
                "model_version": row.header.get("model_version"),
                "annotated_at": when,
                "annotated_at_iso": _iso(when),
                "labeled_pixels": pixels,
                **paths,
            }
        )
    index = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "robot": robot_id,
        "since": since,
        "classes": list(CLASS_NAMES),
        "palette": PALETTE.tolist(),
        "ignore": IGNORE,
        "regions": summary.regions,
        "skipped": summary.skipped,
    }
    write_atomic(folder / "index.json", json.dumps(index, indent=1).encode())
    return summary
