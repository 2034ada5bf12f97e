"""Adaptation with few labels: what the robot has in plenty (unlabeled new-domain frames) beside
the few labeled regions, and the training rule every fine-tune shares.

- ``reestimate_batchnorm``: BatchNorm statistics recomputed over a mix of new-domain frames and
  old-domain replay frames. The base model's statistics are the city's; on the countryside the
  normalised activations are off before any weight is wrong. The old-domain share keeps the
  city's statistics in the mix, so the robot, which runs one model everywhere, does not lose
  the old domain to it.
- ``pseudo_labels``: the model's own confident pixels on unlabeled frames (255 elsewhere), to be
  trained on beside the human labels.
- ``iterations_for``: fine-tuning iterations grow with the labeled pixels (a floor for a few
  regions, a cap for whole drives), so the fully labeled row converges as the 5 % rows do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.samples import LabeledSample
from models.network import SegNet, preprocess

IGNORE = 255


@dataclass(frozen=True)
class IterationRule:
    """iterations = clamp(per_frame x labeled pixels in whole training frames, floor, cap)."""

    per_frame: float = 3.0
    floor: int = 100
    cap: int = 300

    def __call__(self, labeled_frames: float) -> int:
        return int(min(self.cap, max(self.floor, math.ceil(self.per_frame * labeled_frames))))


def labeled_frames(samples: Sequence[LabeledSample]) -> float:
    """Labeled pixels over the pixels of one training frame (each sample's own size)."""
    total = 0.0
    for s in samples:
        total += float(np.count_nonzero(s.label != IGNORE)) / s.label.size
    return total


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def reestimate_batchnorm(
    model: SegNet,
    new_images: Sequence[np.ndarray],
    old_images: Sequence[np.ndarray],
    size: tuple[int, int],
    batch_size: int = 16,
) -> None:
    """Recompute every BatchNorm layer's running statistics over new and old frames together.

    Exact averages over all the frames (momentum None), in batches that mix both domains in
    proportion, so each batch's statistics are close to the mixture's. Weights are untouched.
    """
    images = list(new_images) + list(old_images)
    if not images:
        raise ValueError("reestimate_batchnorm needs frames")
    order = np.random.default_rng(0).permutation(len(images))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    was_training = model.training
    device = _device(model)
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over every batch
        model.train()
        with torch.no_grad():
            for b in range(0, len(order), batch_size):
                chunk = [images[int(i)] for i in order[b : b + batch_size]]
                if len(chunk) < 2:  # a batch of one has no variance to add
                    continue
                model.forward_lowres(preprocess(chunk, size).to(device))
    finally:
        for m, momentum in zip(bns, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)


def pseudo_labels(
    model: SegNet,
    images: Sequence[np.ndarray],
    size: tuple[int, int],
    threshold: float = 0.9,
    batch_size: int = 8,
) -> list[LabeledSample]:
    """The model's confident predictions on `images` at `size`: the class where its softmax
    reaches `threshold`, 255 elsewhere. Images come back resized to `size`."""
    from common.samples import resize_sample

    was_training = model.training
    model.eval()
    device = _device(model)
    out: list[LabeledSample] = []
    try:
        with torch.inference_mode():
            for b in range(0, len(images), batch_size):
                chunk = list(images[b : b + batch_size])
                low = model.forward_lowres(preprocess(chunk, size).to(device))
                prob = F.interpolate(low, size=size, mode="bilinear", align_corners=False).softmax(
                    1
                )
                conf, pred = prob.max(1)
                label = torch.where(conf >= threshold, pred, torch.full_like(pred, IGNORE))
                for img, lbl in zip(chunk, label.to(torch.uint8).cpu().numpy(), strict=True):
                    resized = resize_sample(img, np.zeros(img.shape[:2], np.uint8), size)
                    out.append(LabeledSample(image=resized.image, label=lbl))
    finally:
        model.train(was_training)
    return out
