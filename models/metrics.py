"""Confusion matrix (bincount) and IoU, as torchvision's segmentation references, with nanmean."""

from __future__ import annotations

import numpy as np

from common.classes import IGNORE, NUM_CLASSES


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int = NUM_CLASSES, ignore: int = IGNORE
) -> np.ndarray:
    """Rows = ground truth, columns = prediction; `ignore` and out-of-range targets are skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    t = target.astype(np.int64).ravel()
    p = pred.astype(np.int64).ravel()
    keep = (t != ignore) & (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    counts = np.bincount(num_classes * t[keep] + p[keep], minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def per_class_iou(conf: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for classes absent from both prediction and ground truth."""
    c = conf.astype(np.float64)
    inter = np.diag(c)
    union = c.sum(0) + c.sum(1) - inter
    iou = np.full(inter.shape, np.nan)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth; 0.0 when no pixel is labelled.

    A class that is only predicted is not averaged in: its false positives already lower the
    IoU of the class they belong to. Averaged in as a 0, one stray pixel of a class absent from
    a small set would cost a whole class's share of the mean: on the forgetting guard's 24 city
    frames a fine-tune that put a few rural-class pixels on them lost 1/9 of its mIoU and was
    thrown away (route seed 17, ``docs/adaptation.md``). One rule for every mIoU: the guard,
    the transfer gate, ``ars eval`` and the benches' ``scores``.
    """
    present = conf.sum(1) > 0
    if not present.any():
        return 0.0
    return float(np.mean(per_class_iou(conf)[present]))


#: Small or thin classes (walls, fences, poles, lights, signs, people, vehicles): scored apart
#: from the large stuff classes (road, sidewalk, building, vegetation, terrain, sky), whose
#: pixel counts would otherwise hide them.
SMALL_CLASSES: tuple[int, ...] = (3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def scores(conf: np.ndarray, small: tuple[int, ...] = SMALL_CLASSES) -> dict[str, object]:
    """mIoU over the classes present in the ground truth (a class only predicted still lowers
    the true class's IoU through its false positives), pixel accuracy, the mIoU of the large
    and of the small classes present, each present class's IoU (by trainId), and the
    `confused` pairs: the largest off-diagonal cells as [truth, predicted, share of all
    pixels], so a pixel accuracy short of 1 says which mistakes make up the rest."""
    iou = per_class_iou(conf)
    truth = conf.sum(1)
    present = np.nonzero(truth > 0)[0]
    small_set = set(small)

    def mean(ids: list[int]) -> float | None:
        return round(float(np.mean(iou[ids])), 4) if ids else None

    total = int(truth.sum())
    return {
        "miou": round(miou(conf), 4),
        "pixel_acc": round(float(np.trace(conf)) / total, 4) if total else 0.0,
        "miou_large": mean([int(c) for c in present if int(c) not in small_set]),
        "miou_small": mean([int(c) for c in present if int(c) in small_set]),
        "iou": {str(int(c)): round(float(iou[c]), 4) for c in present},
        "confused": confused_pairs(conf),
    }


def confused_pairs(conf: np.ndarray, top: int = 5) -> list[list[float]]:
    """The `top` largest mistakes as [truth trainId, predicted trainId, share of all pixels],
    largest first; mistakes under 0.1 % of the pixels are left out."""
    total = conf.sum()
    if total == 0:
        return []
    off = conf.astype(np.float64) / total
    np.fill_diagonal(off, 0.0)
    order = np.argsort(off, axis=None)[::-1][:top]
    cells = [np.unravel_index(int(k), off.shape) for k in order]
    return [[int(t), int(p), round(float(off[t, p]), 4)] for t, p in cells if off[t, p] >= 1e-3]
