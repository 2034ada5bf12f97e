"""Annotated regions as training samples at the robot's inference scale (protocol rule).

scale = train_width / frame_width; the crop and its label are resized by that scale and pasted
at the scaled box position into a train-size canvas whose image is the crop's mean colour and
whose label is 255 (ignore) outside the region: only the labeled region teaches anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, overload

import numpy as np
from PIL import Image

from common.classes import IGNORE
from common.images import decode_mask, decode_rgb
from common.samples import LabeledSample

if TYPE_CHECKING:
    from server_agent.store import RegionRow, Store


def region_training_sample(
    crop: np.ndarray,
    label: np.ndarray,
    box: tuple[int, int, int, int],
    frame_size: tuple[int, int],
    train_hw: tuple[int, int],
) -> LabeledSample:
    """One labeled region (crop HxWx3, label HxW, box x,y,w,h, frame W,H) -> a canvas sample."""
    x, y, w, h = box
    frame_w, _ = frame_size
    th, tw = train_hw
    if crop.shape[:2] != (h, w) or label.shape != (h, w):
        raise ValueError(f"crop {crop.shape[:2]} and label {label.shape} must be the box {h}x{w}")
    scale = tw / frame_w
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    sx, sy = round(x * scale), round(y * scale)
    img = np.asarray(Image.fromarray(crop).resize((sw, sh), Image.Resampling.BILINEAR))
    lbl = np.asarray(Image.fromarray(label).resize((sw, sh), Image.Resampling.NEAREST))
    mean = crop.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    canvas = np.empty((th, tw, 3), dtype=np.uint8)
    canvas[:] = mean
    target = np.full((th, tw), IGNORE, dtype=np.uint8)
    # clip to the canvas (rounding may push the last row or column out by one)
    x0, y0 = min(max(sx, 0), tw), min(max(sy, 0), th)
    x1, y1 = min(sx + sw, tw), min(sy + sh, th)
    canvas[y0:y1, x0:x1] = img[y0 - sy : y1 - sy, x0 - sx : x1 - sx]
    target[y0:y1, x0:x1] = lbl[y0 - sy : y1 - sy, x0 - sx : x1 - sx]
    return LabeledSample(image=canvas, label=target)


class RegionSamples(Sequence[LabeledSample]):
    """Labeled regions as training samples, read and decoded from the store on access.

    A fine-tune job holds only the rows, so its memory stays flat however many regions have
    been labeled (decoded, each is a train-size canvas: ~300 KB at 320x240).
    """

    def __init__(self, store: Store, rows: Sequence[RegionRow], train_hw: tuple[int, int]):
        self.store = store
        self.rows = list(rows)
        self.train_hw = train_hw

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> LabeledSample: ...
    @overload
    def __getitem__(self, index: slice) -> list[LabeledSample]: ...
    def __getitem__(self, index: int | slice) -> LabeledSample | list[LabeledSample]:
        if isinstance(index, slice):
            return [self._load(row) for row in self.rows[index]]
        return self._load(self.rows[index])

    def _load(self, row: RegionRow) -> LabeledSample:
        crop_png, _, ann_png = self.store.read_region(row)
        crop = decode_rgb(crop_png, what=f"region {row.region_id} crop")
        label = decode_mask(ann_png, what=f"region {row.region_id} annotation")
        return region_training_sample(crop, label, row.box, row.frame_size, self.train_hw)
