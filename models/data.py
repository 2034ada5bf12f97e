"""Labelled samples and the simulator sets: source replay (urban) and held-out frames.

Frames are rendered at the camera size (640x480) and resized to the inference size exactly as
the robot does (image bilinear with antialias, labels nearest), so the figures match deployment.
Seed ranges never overlap: pretraining pool, replay set and held-out sets draw from their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

from simulator.palette import IGNORE

CAMERA_HW: Final = (480, 640)
INFER_HW: Final = (240, 320)
# Disjoint seed ranges per use; 1,000,000 scenes each.
POOL_SEEDS: Final = 0
REPLAY_SEEDS: Final = 10_000_000
HELDOUT_SEEDS: Final = 20_000_000
_SPAN: Final = 1_000_000


@dataclass(frozen=True)
class LabeledSample:
    """An RGB image (HxWx3 uint8) and its trainId mask (HxW uint8, 255 = ignore)."""

    image: np.ndarray
    label: np.ndarray


def resize_sample(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> LabeledSample:
    """Resize to (height, width): image bilinear (antialiased by PIL), label nearest."""
    h, w = size
    if image.shape[:2] == (h, w):
        return LabeledSample(image=image, label=label)
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    lbl = np.asarray(Image.fromarray(label).resize((w, h), Image.Resampling.NEAREST))
    return LabeledSample(image=img, label=lbl)


def render_samples(
    domain: str,
    seeds: range | list[int],
    size: tuple[int, int] = INFER_HW,
    camera_hw: tuple[int, int] = CAMERA_HW,
) -> list[LabeledSample]:
    """Render one independent simulator scene per seed and resize it to `size`."""
    from simulator.scene import render_frame  # deferred: keeps `import models` light

    out = []
    for s in seeds:
        frame = render_frame(domain, int(s), width=camera_hw[1], height=camera_hw[0])
        out.append(resize_sample(frame.image, frame.label, size))
    return out


def source_replay_set(
    n: int, seed: int = 0, size: tuple[int, int] = INFER_HW
) -> list[LabeledSample]:
    """Urban (old-domain) frames with full labels: the replay guard against forgetting."""
    start = REPLAY_SEEDS + (seed % 1000) * 1000
    return render_samples("urban", range(start, start + n), size)


def heldout_set(
    domain: str, n: int, seed: int = 0, size: tuple[int, int] = INFER_HW
) -> list[LabeledSample]:
    """Held-out frames of a domain, never used for training."""
    if domain not in ("urban", "rural"):
        raise ValueError(f"unknown domain {domain!r}; expected urban or rural")
    start = HELDOUT_SEEDS + (_SPAN if domain == "rural" else 0) + (seed % 1000) * 1000
    return render_samples(domain, range(start, start + n), size)


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
