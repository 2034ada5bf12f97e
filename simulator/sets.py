"""Labelled simulator sets: the pretraining pool, source replay (urban) and held-out frames.

Frames are rendered at the camera size (640x480) and resized to the inference size exactly as
the robot does (``common.samples.resize_sample``), so the figures match deployment. Seed ranges
never overlap: pretraining pool, replay set and held-out sets draw from their own. Entry points
(``ars server``, ``ars pretrain``, ``ars eval``, the benches) pass these sets into ``models`` and
the server's fine-tune runner, which import no simulator.
"""

from __future__ import annotations

from typing import Final

from common.samples import LabeledSample, resize_sample
from simulator.scene import render_frame

CAMERA_HW: Final = (480, 640)
# Disjoint seed ranges per use; 1,000,000 scenes each.
POOL_SEEDS: Final = 0
REPLAY_SEEDS: Final = 10_000_000
HELDOUT_SEEDS: Final = 20_000_000
_SPAN: Final = 1_000_000


def render_samples(
    domain: str,
    seeds: range | list[int],
    size: tuple[int, int],
    camera_hw: tuple[int, int] = CAMERA_HW,
) -> list[LabeledSample]:
    """Render one independent simulator scene per seed and resize it to `size`."""
    out = []
    for s in seeds:
        frame = render_frame(domain, int(s), width=camera_hw[1], height=camera_hw[0])
        out.append(resize_sample(frame.image, frame.label, size))
    return out


def pool_set(n: int, seed: int, size: tuple[int, int]) -> list[LabeledSample]:
    """Urban frames to pretrain on: ten pools of 100,000 seeds, picked by `seed`."""
    start = POOL_SEEDS + (seed % 10) * 100_000
    return render_samples("urban", range(start, start + n), size)


def source_replay_set(n: int, seed: int, size: tuple[int, int]) -> list[LabeledSample]:
    """Urban (old-domain) frames with full labels: the replay guard against forgetting."""
    start = REPLAY_SEEDS + (seed % 1000) * 1000
    return render_samples("urban", range(start, start + n), size)


def heldout_set(domain: str, n: int, seed: int, size: tuple[int, int]) -> list[LabeledSample]:
    """Held-out frames of a domain, never used for training."""
    if domain not in ("urban", "rural"):
        raise ValueError(f"unknown domain {domain!r}; expected urban or rural")
    start = HELDOUT_SEEDS + (_SPAN if domain == "rural" else 0) + (seed % 1000) * 1000
    return render_samples(domain, range(start, start + n), size)


class SimulatorSets:
    """The server's replay and held-out sets (``models.data.SampleSets``), seed 0."""

    def replay(self, n: int, size: tuple[int, int]) -> list[LabeledSample]:
        return source_replay_set(n, 0, size) if n else []

    def heldout(self, domain: str, n: int, size: tuple[int, int]) -> list[LabeledSample]:
        return heldout_set(domain, n, 0, size)
