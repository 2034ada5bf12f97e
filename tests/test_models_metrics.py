"""Confusion matrix and mIoU against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import confusion_matrix, miou, per_class_iou, scores

# Pixels (target, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (255,2 ignored) (1,2)
TARGET = np.array([[0, 0, 1, 1], [2, 2, 255, 1]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1], [2, 0, 2, 2]], dtype=np.uint8)


def test_confusion_matrix_by_hand() -> None:
    conf = confusion_matrix(PRED, TARGET, num_classes=3)
    # rows = ground truth, columns = prediction
    assert conf.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    assert conf.sum() == 7  # the 255 pixel is not counted


def test_iou_by_hand() -> None:
    conf = confusion_matrix(PRED, TARGET, num_classes=3)
    # class 0: inter 1, union 2 + 2 - 1 = 3; class 1: 2 / (3 + 3 - 2); class 2: 1 / (2 + 2 - 1)
    assert per_class_iou(conf) == pytest.approx([1 / 3, 1 / 2, 1 / 3])
    assert miou(conf) == pytest.approx(7 / 18)


def test_absent_class_is_nan_and_skipped_by_nanmean() -> None:
    conf = confusion_matrix(PRED, TARGET, num_classes=4)
    iou = per_class_iou(conf)
    assert math.isnan(iou[3])
    assert miou(conf) == pytest.approx(7 / 18)


def test_class_only_predicted_lowers_the_true_class_but_is_not_averaged() -> None:
    # truth: classes 0 and 1; the model calls one class-1 pixel class 2, which is in no truth
    target = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    pred = np.array([[0, 0, 1, 2]], dtype=np.uint8)
    conf = confusion_matrix(pred, target, num_classes=3)
    iou = per_class_iou(conf)
    assert iou[2] == 0.0  # present in the prediction: IoU 0, not NaN
    assert miou(conf) == pytest.approx((1.0 + 0.5) / 2)  # class 1 pays for the stray pixel
    assert scores(conf)["miou"] == pytest.approx(0.75)  # the benches' score is the same rule


def test_perfect_and_empty() -> None:
    mask = np.array([[0, 1], [2, 2]], dtype=np.uint8)
    assert miou(confusion_matrix(mask, mask, num_classes=19)) == pytest.approx(1.0)
    all_ignored = np.full((2, 2), 255, dtype=np.uint8)
    assert miou(confusion_matrix(mask, all_ignored, num_classes=19)) == 0.0


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED, TARGET[:, :2], num_classes=3)
