"""Where training samples come from: the sets a runner is given, and annotated regions.

The replay and held-out sets are passed in (``SampleSets``; the simulator provides them from the
entry points), so ``models`` renders nothing itself.

An annotated region becomes a sample at the robot's inference scale (the protocol's rule, used by
the server and the benches): scale = train_width / frame_width; the crop and its label are
resized by that scale and pasted at the scaled box position into a train-size canvas whose image
is the crop's mean colour and whose label is 255 (ignore) outside the region, so only the labeled
region teaches anything.
"""

from __future__ import annotations

from typing import Final, Protocol

import numpy as np
from PIL import Image

from common.classes import IGNORE
from common.samples import LabeledSample

INFER_HW: Final = (240, 320)


class SampleSets(Protocol):
    """Source-domain replay and held-out frames, resized to ``size`` (height, width)."""

    def replay(self, n: int, size: tuple[int, int]) -> list[LabeledSample]: ...

    def heldout(self, domain: str, n: int, size: tuple[int, int]) -> list[LabeledSample]: ...


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
