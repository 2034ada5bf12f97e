"""Adaptation with few labels: what the robot has in plenty (unlabeled new-domain frames) beside
the few labeled regions, and the training rule every fine-tune shares.

- ``reestimate_batchnorm``: BatchNorm statistics recomputed over a mix of new-domain frames and
  old-domain replay frames. The base model's statistics are the city's; on the countryside the
  normalised activations are off before any weight is wrong. The old-domain share keeps the
  city's statistics in the mix, so the robot, which runs one model everywhere, does not lose
  the old domain to it.
- ``pseudo_labels``: the model's own confident pixels on unlabeled frames (255 elsewhere), to be
  trained on beside the human labels.
- ``IterationRule``: fine-tuning iterations grow with the labeled pixels (a floor for a few
  regions, a cap for whole drives), so the fully labeled row converges as the 5 % rows do.
- ``bound_forgetting``: the forgetting guard. The old domain may lose at most a budget against
  the *shipped* model over all rounds together; a fine-tune that spends more is blended back
  toward the model the robot runs (which kept within the budget) until it keeps within it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

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


_Net = TypeVar("_Net", bound=nn.Module)

#: Weights of the fine-tune's change the guard tries, largest first (0: the robot's model).
BLEND_STEPS = (1.0, 0.75, 0.5, 0.25, 0.0)


@dataclass(frozen=True)
class GuardResult:
    """The share of the fine-tune's change kept (1: all of it) and its old-domain mIoU."""

    blend: float
    old_miou: float
    tried: int


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights and buffers, to blend back toward after a fine-tune."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def blend_into(
    model: nn.Module, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], share: float
) -> None:
    """Set the model to before + share x (after - before): floating tensors (weights and
    BatchNorm statistics) blend, integer buffers (batch counters) take `after`'s."""
    mixed = {
        k: torch.lerp(before[k], v, share) if v.is_floating_point() else v for k, v in after.items()
    }
    model.load_state_dict(mixed)


def bound_forgetting(
    model: _Net,
    before: dict[str, torch.Tensor],
    old_miou: Callable[[_Net], float],
    anchor: float,
    budget: float,
) -> GuardResult:
    """Keep the fine-tuned `model` within `budget` old-domain mIoU of `anchor` (the shipped
    model's, on the guard's old-domain frames), blending it back toward `before` (the model the
    robot ran) in BLEND_STEPS until it does.

    Why anchored at the shipped model: a guard against the running model alone lets a tolerance
    per round add up, and a drive that pulls the model hard (route seed 5) spent 0.023 of urban
    mIoU in one round. Blending, not refusing: weights between the two models can keep part of
    the new domain's gain at a smaller old-domain loss (interpolation, as in WiSE-FT, Wortsman
    et al. 2022; ``docs/adaptation.md`` measures what it costs). Share 0 is the robot's model
    itself, within budget by induction.
    """
    after = snapshot(model)
    tried = 0
    score = float("nan")
    for share in BLEND_STEPS:
        if share < 1.0:
            blend_into(model, before, after, share)
        score = old_miou(model)
        tried += 1
        if score >= anchor - budget:
            return GuardResult(share, score, tried)
    return GuardResult(0.0, score, tried)  # the robot's own model: nothing better to offer
