"""Hardest-region mining: the window of highest mean entropy, mapped back to frame pixels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.entropy import frame_score, normalized_entropy


@dataclass(frozen=True)
class MiningResult:
    """Frame score, its mean entropy and the hardest box (x, y, w, h) in frame pixels."""

    score: float
    mean_entropy: float
    box: tuple[int, int, int, int]
    region_entropy: float


def _check(entropy: np.ndarray, win_h: int, win_w: int) -> tuple[int, int]:
    if entropy.ndim != 2 or entropy.size == 0:
        raise ValueError(f"expected a non-empty HxW map, got shape {entropy.shape}")
    h, w = entropy.shape
    return min(max(1, int(win_h)), h), min(max(1, int(win_w)), w)


def hardest_window(entropy: np.ndarray, win_h: int, win_w: int) -> tuple[int, int, float]:
    """(y, x, mean) of the win_h x win_w window with the highest mean, via a summed-area table.

    O(H*W) instead of the paper's average pool over every position; same answer (first
    maximum in row-major order). Windows larger than the map are clamped to it.
    """
    wh, ww = _check(entropy, win_h, win_w)
    sat = np.zeros((entropy.shape[0] + 1, entropy.shape[1] + 1), dtype=np.float64)
    sat[1:, 1:] = entropy.astype(np.float64).cumsum(0).cumsum(1)
    sums = sat[wh:, ww:] - sat[:-wh, ww:] - sat[wh:, :-ww] + sat[:-wh, :-ww]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x), float(sums[y, x] / (wh * ww))


def hardest_window_reference(entropy: np.ndarray, win_h: int, win_w: int) -> tuple[int, int, float]:
    """The paper's way: average-pool with stride 1 over every position, take the maximum."""
    wh, ww = _check(entropy, win_h, win_w)
    t = torch.from_numpy(entropy.astype(np.float64))[None, None]
    pooled = F.avg_pool2d(t, (wh, ww), stride=1)[0, 0]
    idx = int(torch.argmax(pooled))
    y, x = divmod(idx, pooled.shape[1])
    return y, x, float(pooled[y, x])


def _place(start_low: int, win_low: int, low: int, full: int, size: int) -> int:
    """Centre a `size`-pixel box on the low-res window's centre, clamped inside the frame."""
    centre = (start_low + win_low / 2.0) * full / low
    return min(max(0, round(centre - size / 2.0)), full - size)


#: Picks a window: (normalised entropy map, window (h, w) on it) -> the window's (y, x).
WindowRule = Callable[[np.ndarray, tuple[int, int]], tuple[int, int]]


def mine(
    lowres_logits: torch.Tensor,
    frame_hw: tuple[int, int],
    region_frac: float = 0.5,
    window_rule: WindowRule | None = None,
) -> MiningResult:
    """Score a frame and find its region from the low-resolution logits (CxhXw).

    The region is the hardest window, or the one `window_rule` picks (the robot's
    ``models.selection.GridSpreader.choose``); `region_entropy` is its mean entropy.
    """
    if not 0.0 < region_frac <= 1.0:
        raise ValueError(f"region_frac must be in (0, 1], got {region_frac}")
    entropy = normalized_entropy(lowres_logits)
    # numpy's argmax over the class axis is ~3x faster than torch's here (first maximum wins)
    pred = lowres_logits.detach().float().cpu().numpy().argmax(0)
    low_h, low_w = entropy.shape
    win_h, win_w = _check(entropy, *window_size((low_h, low_w), region_frac))
    if window_rule is None:
        y, x, region = hardest_window(entropy, win_h, win_w)
    else:
        y, x = window_rule(entropy, (win_h, win_w))
        if not (0 <= y <= low_h - win_h and 0 <= x <= low_w - win_w):
            raise ValueError(f"window rule chose ({y}, {x}): outside the {low_h}x{low_w} map")
        region = float(entropy[y : y + win_h, x : x + win_w].mean(dtype=np.float64))
    return MiningResult(
        score=frame_score(entropy, pred),
        mean_entropy=float(entropy.mean(dtype=np.float64)),
        box=window_box((y, x), (win_h, win_w), (low_h, low_w), frame_hw, region_frac),
        region_entropy=region,
    )


def window_size(low_hw: tuple[int, int], region_frac: float) -> tuple[int, int]:
    """(h, w) of the mining window on a low-resolution map of `low_hw`."""
    return max(1, round(region_frac * low_hw[0])), max(1, round(region_frac * low_hw[1]))


def window_box(
    at: tuple[int, int],
    win_hw: tuple[int, int],
    low_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    region_frac: float,
) -> tuple[int, int, int, int]:
    """The frame-pixel box (x, y, w, h) of the low-resolution window at (y, x)."""
    (y, x), (win_h, win_w), (low_h, low_w) = at, win_hw, low_hw
    frame_h, frame_w = frame_hw
    box_w = min(max(1, round(region_frac * frame_w)), frame_w)
    box_h = min(max(1, round(region_frac * frame_h)), frame_h)
    return (
        _place(x, win_w, low_w, frame_w, box_w),
        _place(y, win_h, low_h, frame_h, box_h),
        box_w,
        box_h,
    )
