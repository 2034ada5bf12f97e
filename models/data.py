"""Where training samples come from: the sets a runner is given, and labelled regions.

The replay and held-out sets are passed in (``SampleSets``; the simulator provides them from the
entry points), so ``models`` renders nothing itself.
"""

from __future__ import annotations

from typing import Final, Protocol

import numpy as np

from common.classes import IGNORE
from common.samples import LabeledSample, resize_sample

INFER_HW: Final = (240, 320)


class SampleSets(Protocol):
    """Source-domain replay and held-out frames, resized to ``size`` (height, width)."""

    def replay(self, n: int, size: tuple[int, int]) -> list[LabeledSample]: ...

    def heldout(self, domain: str, n: int, size: tuple[int, int]) -> list[LabeledSample]: ...


def region_sample(
    frame_image: np.ndarray,
    box: tuple[int, int, int, int],
    crop_label: np.ndarray,
    size: tuple[int, int] | None = INFER_HW,
) -> LabeledSample:
    """A training sample from one labelled region: the whole frame, 255 outside the box.

    Keeps the scale the robot infers at (frame resized to `size`), so the region's objects
    look in training as they do in deployment.
    """
    x, y, w, h = box
    fh, fw = frame_image.shape[:2]
    if crop_label.shape != (h, w) or x < 0 or y < 0 or x + w > fw or y + h > fh:
        raise ValueError(f"box {box} and label {crop_label.shape} do not fit frame {fh}x{fw}")
    label = np.full((fh, fw), IGNORE, dtype=np.uint8)
    label[y : y + h, x : x + w] = crop_label
    if size is None:
        return LabeledSample(image=frame_image, label=label)
    return resize_sample(frame_image, label, size)
