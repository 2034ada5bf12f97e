"""Seeds set in one place: torch (weights init, dropout) and the numpy sampler of batches."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return the generator that draws batches and crops."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
