"""A labelled sample (an RGB image and its trainId mask) and the one way to resize it.

The simulator produces samples, the server builds them from annotated regions and the models
train and evaluate on them; they meet here so none of them imports another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class LabeledSample:
    """An RGB image (HxWx3 uint8) and its trainId mask (HxW uint8, 255 = ignore)."""

    image: np.ndarray
    label: np.ndarray


def resize_sample(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> LabeledSample:
    """Resize to (height, width) as the robot does: image bilinear (antialiased by PIL), label
    nearest, so training and evaluation see what deployment sees."""
    h, w = size
    if image.shape[:2] == (h, w):
        return LabeledSample(image=image, label=label)
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    lbl = np.asarray(Image.fromarray(label).resize((w, h), Image.Resampling.NEAREST))
    return LabeledSample(image=img, label=lbl)
