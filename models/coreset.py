"""Core-set selection: windows that cover the new domain's look, not the hardest ones.

The label-efficiency probe showed that entropy cannot see this domain's confident errors and
that the hardest windows cluster on a few stretches of road and one place in the image. The
k-center greedy rule (Sener and Savarese, "Active Learning for Convolutional Neural Networks:
A Core-Set Approach", ICLR 2018) needs no uncertainty at all: each pick is the window whose
backbone feature is farthest from every window picked so far, so the labelled set covers the
appearance of the drive (road, verge, trees, sky, fences) with no near-duplicates. A frame
gives at most one window, so the budget stays ``budget_count(ratio, n)`` quarter windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.mining import window_size
from models.selection import budget_count, grid_windows

__all__ = ["grid_cells", "select_kcenter", "window_features"]


def grid_cells(
    map_hw: tuple[int, int], region_frac: float = 0.5, grid: int = 3
) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """The `grid` x `grid` windows of a map of `map_hw`: their (y, x) and their (h, w).

    `models.mining.window_box` turns one into a frame-pixel box.
    """
    win = window_size(map_hw, region_frac)
    return grid_windows(map_hw, win, grid), win


def window_features(high: torch.Tensor, region_frac: float = 0.5, grid: int = 3) -> np.ndarray:
    """Unit mean feature of each `grid_cells` window of a CxHxW feature map (cells x C)."""
    if high.ndim != 3:
        raise ValueError(f"expected a CxHxW feature map, got shape {tuple(high.shape)}")
    unit = F.normalize(high.detach().float(), dim=0)
    cells, (wh, ww) = grid_cells((int(unit.shape[1]), int(unit.shape[2])), region_frac, grid)
    pooled = torch.stack([unit[:, y : y + wh, x : x + ww].mean((1, 2)) for y, x in cells])
    return F.normalize(pooled, dim=1).cpu().numpy().astype(np.float32)


def select_kcenter(
    features: Sequence[np.ndarray], ratio: float, reference: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """(frame, cell) pairs, budget_count(ratio, n) of them, by k-center greedy.

    `features[i]` is frame i's cells x C window features. Each pick is the window farthest
    (Euclidean on unit vectors) from all windows picked so far and from `reference` (M x C,
    windows already labelled, if any), among frames not yet picked. With no reference the
    first pick is the window farthest from the mean window. Deterministic: ties go to the
    lower frame, then the lower cell.
    """
    k = budget_count(ratio, len(features))
    if k == 0:
        return []
    sizes = [int(f.shape[0]) for f in features]
    if min(sizes) < 1 or len({int(f.shape[1]) for f in features}) != 1:
        raise ValueError("every frame needs at least one window feature of the same length")
    x = torch.from_numpy(np.concatenate([np.asarray(f, dtype=np.float32) for f in features]))
    owner = torch.repeat_interleave(torch.arange(len(features)), torch.tensor(sizes))
    first = torch.cumsum(torch.tensor([0, *sizes[:-1]]), 0)
    if reference is not None and len(reference):
        ref = torch.from_numpy(np.asarray(reference, dtype=np.float32))
        dist = torch.cdist(x, ref).min(1).values
    else:  # no labelled data yet: start from the window least like the average one
        dist = torch.cdist(x, x.mean(0, keepdim=True))[:, 0]
    picks: list[tuple[int, int]] = []
    taken = torch.zeros(len(features), dtype=torch.bool)
    for _ in range(k):
        masked = torch.where(taken[owner], torch.full_like(dist, -1.0), dist)
        j = int(torch.argmax(masked))  # first maximum: lowest frame, then cell
        frame = int(owner[j])
        picks.append((frame, j - int(first[frame])))
        taken[frame] = True
        dist = torch.minimum(dist, torch.cdist(x, x[j : j + 1])[:, 0])
    return picks
