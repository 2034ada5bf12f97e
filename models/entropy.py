"""Per-pixel entropy and the frame score of ARSFineTune (DESIGN.md section 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from common.classes import RARE_CLASSES

# Weight of a frame with no rare class at all: it keeps half its entropy, never zero.
RARE_FLOOR = 0.5


def normalized_entropy(logits: torch.Tensor) -> np.ndarray:
    """Softmax entropy per pixel divided by log(C): CxHxW logits -> HxW float32 in [0, 1]."""
    if logits.ndim != 3:
        raise ValueError(f"expected CxHxW logits, got shape {tuple(logits.shape)}")
    num_classes = logits.shape[0]
    if num_classes < 2:
        return np.zeros(tuple(logits.shape[1:]), dtype=np.float32)
    with torch.no_grad():
        logp = torch.log_softmax(logits.detach().float(), dim=0)
        ent = -(logp.exp() * logp).sum(dim=0) / math.log(num_classes)
    return ent.clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)


def rare_factor(pred: np.ndarray, rare: Sequence[int] = RARE_CLASSES) -> float:
    """(number of rare classes present / number of rare classes) + 0.5, in [0.5, 1.5]."""
    if not rare:
        return 1.0
    counts = np.bincount(pred.ravel(), minlength=max(rare) + 1)  # faster than np.unique
    present = int((counts[np.asarray(rare)] > 0).sum())
    return float(present) / len(rare) + RARE_FLOOR


def frame_score(entropy: np.ndarray, pred: np.ndarray, rare: Sequence[int] = RARE_CLASSES) -> float:
    """Mean entropy x rare factor: uncertain frames with more rare classes rank first."""
    if entropy.size == 0:
        return 0.0
    return float(entropy.mean(dtype=np.float64)) * rare_factor(pred, rare)
