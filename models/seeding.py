"""Seeds set in one place: torch (weights init, dropout) and the numpy sampler of batches;
and the rest of what a seeded run's figures depend on (``compute_fingerprint``)."""

from __future__ import annotations

import platform
import random
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return the generator that draws batches and crops."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def compute_fingerprint(device: str = "cpu") -> dict[str, str]:
    """What a seeded run's floating-point results depend on besides its seeds and code: the
    torch build and the kernels it picks for this processor. A run reproduces bit for bit
    where these match; on a processor with other vector kernels the sums round otherwise,
    and a few hundred SGD steps carry that into the figures (docs/adaptation.md)."""
    out = {
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def _cpu_model() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
