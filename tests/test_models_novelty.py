"""Feature novelty: prototypes from labelled old-domain samples, novelty of new pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.samples import LabeledSample
from models.network import build_model
from models.novelty import Prototypes, class_prototypes, features_and_logits, novelty_map


def test_novelty_is_zero_on_the_prototype_and_one_for_a_class_never_seen() -> None:
    vectors = torch.eye(3, 4)  # class c's prototype is the unit vector e_c
    protos = Prototypes(vectors, torch.tensor([True, True, False]))
    high = torch.zeros(4, 2, 2)
    high[0, 0, 0] = 5.0  # like class 0's prototype (any length: cosine)
    high[1, 0, 1] = 1.0  # like class 1's, but predicted as class 0: orthogonal
    high[2, 1, :] = 1.0  # like class 2's, which the old domain never showed
    logits = torch.full((3, 2, 2), -5.0)
    logits[0, 0, :] = 5.0  # top row predicted class 0
    logits[2, 1, :] = 5.0  # bottom row predicted class 2
    nov = novelty_map(high, logits, protos)
    assert nov.shape == (2, 2) and nov.dtype == np.float32
    assert nov[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert nov[0, 1] == pytest.approx(0.5, abs=1e-6)  # cosine 0 -> (1 - 0) / 2
    assert np.allclose(nov[1], 1.0)


def test_prototypes_come_from_labelled_classes_only() -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    rng = np.random.default_rng(0)
    label = np.full((48, 64), 255, dtype=np.uint8)
    label[:24] = 10  # sky on top, road below, nothing else labelled
    label[24:] = 0
    samples = [
        LabeledSample(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), label) for _ in range(2)
    ]
    protos = class_prototypes(model, samples, 19, size=(48, 64))
    assert protos.present.nonzero().flatten().tolist() == [0, 10]
    norms = protos.vectors[protos.present].norm(dim=1)
    assert torch.allclose(norms, torch.ones(2), atol=1e-5)
    high, logits = features_and_logits(model, torch.zeros(1, 3, 48, 64))
    assert high.shape[0] == protos.vectors.shape[1] and logits.shape[0] == 19
    with pytest.raises(ValueError, match="at least one"):
        class_prototypes(model, [], 19)
