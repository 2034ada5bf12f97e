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
    """Mean IoU over the classes that occur (nanmean); 0.0 for an empty matrix."""
    iou = per_class_iou(conf)
    if np.all(np.isnan(iou)):
        return 0.0
    return float(np.nanmean(iou))
