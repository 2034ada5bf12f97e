"""Feature novelty: how unlike the old domain a pixel looks, to catch confident errors.

Entropy cannot see an error the model is sure of (this simulator's rural terrain read as
vegetation with low entropy). Novelty compares each pixel's deep feature with the old
domain's prototype of the class the model predicts there: far from it means "this is not what
that class looked like in training", whatever the softmax says. Prototypes are the mean
L2-normalised backbone features ("high", stride 16) per ground-truth class over labelled
old-domain frames (the server's replay set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.samples import LabeledSample
from models.data import INFER_HW
from models.network import SegNet, preprocess

__all__ = ["Prototypes", "class_prototypes", "features_and_logits", "novelty_map"]


@dataclass(frozen=True)
class Prototypes:
    """Unit-length mean feature per class (K x C) and which classes had any pixel."""

    vectors: torch.Tensor
    present: torch.Tensor


def features_and_logits(model: SegNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: "high" backbone features (C x h x w), low-res logits (K x h' x w')."""
    with torch.inference_mode():
        feats = model.backbone(x)
        logits = model.classifier(feats)
    return feats["high"][0].float(), logits[0].float()


def class_prototypes(
    model: SegNet,
    samples: Sequence[LabeledSample],
    num_classes: int,
    size: tuple[int, int] = INFER_HW,
) -> Prototypes:
    """Mean unit feature per ground-truth class over `samples` (labels nearest-downsampled)."""
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes)
    for sample in samples:
        high, _ = features_and_logits(model, preprocess(sample.image, size))
        high = F.normalize(high, dim=0)
        label = torch.from_numpy(np.asarray(sample.label, dtype=np.int64))[None, None].float()
        label = F.interpolate(label, size=tuple(high.shape[1:]), mode="nearest")[0, 0].long()
        if sums is None:
            sums = torch.zeros(num_classes, high.shape[0])
        for c in range(num_classes):  # ignore (255) is no class: it counts for none
            mask = label == c
            if bool(mask.any()):
                sums[c] += high[:, mask].sum(1)
                counts[c] += int(mask.sum())
    if sums is None:
        raise ValueError("class_prototypes needs at least one sample")
    return Prototypes(F.normalize(sums / counts.clamp(min=1)[:, None], dim=1), counts > 0)


def novelty_map(high: torch.Tensor, logits: torch.Tensor, protos: Prototypes) -> np.ndarray:
    """Per feature pixel, (1 - cosine to the predicted class's prototype) / 2, in [0, 1].

    A predicted class the old domain never showed is maximally novel (1).
    """
    high = F.normalize(high.float(), dim=0)
    pred = F.interpolate(logits[None].float(), size=tuple(high.shape[1:]), mode="bilinear")
    pred_cls = pred[0].argmax(0)
    cos = torch.einsum("chw,kc->khw", high, protos.vectors).gather(0, pred_cls[None])[0]
    cos = torch.where(protos.present[pred_cls], cos, torch.full_like(cos, -1.0))
    return ((1.0 - cos) / 2.0).clamp(0.0, 1.0).numpy().astype(np.float32)
