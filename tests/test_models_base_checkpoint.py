"""The shipped base model: LR-ASPP MobileNetV3-Large, fp16, < 8 MB, with the domain gap."""

from __future__ import annotations

import pytest
import torch

from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from models.data import INFER_HW
from models.training import evaluate
from simulator.sets import heldout_set


def test_base_checkpoint_metadata() -> None:
    assert DEFAULT_CHECKPOINT.is_file(), "models/checkpoints/base.pt is missing"
    assert DEFAULT_CHECKPOINT.stat().st_size < 8 * 1024 * 1024
    model, meta = load_checkpoint(DEFAULT_CHECKPOINT, expected_arch="lraspp_mbv3_large")
    assert meta.dtype == "fp16"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert meta.metrics["urban_miou"] >= 0.6
    assert meta.metrics["rural_miou"] / meta.metrics["urban_miou"] <= 0.6


def test_base_checkpoint_measures_what_it_claims() -> None:
    """A few fresh held-out frames (another seed than the stored figures) agree with them."""
    torch.set_num_threads(1)
    model, meta = load_checkpoint(DEFAULT_CHECKPOINT)
    urban = evaluate(model, heldout_set("urban", 6, 7, INFER_HW))
    rural = evaluate(model, heldout_set("rural", 6, 7, INFER_HW))
    assert urban == pytest.approx(meta.metrics["urban_miou"], abs=0.12)
    assert rural < 0.75 * urban
