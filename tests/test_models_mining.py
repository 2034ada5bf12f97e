"""Entropy, frame score and hardest-window mining (summed-area table vs average pool)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.classes import RARE_CLASSES
from models.entropy import frame_score, normalized_entropy, rare_factor
from models.mining import hardest_window, hardest_window_reference, mine


def test_entropy_uniform_is_one_and_confident_is_zero() -> None:
    uniform = torch.zeros(19, 6, 8)
    assert normalized_entropy(uniform) == pytest.approx(np.ones((6, 8)), abs=1e-6)
    confident = torch.full((19, 6, 8), -20.0)
    confident[7] = 20.0
    ent = normalized_entropy(confident)
    assert ent.dtype == np.float32
    assert ent.shape == (6, 8)
    assert float(ent.max()) < 1e-6


def test_entropy_two_way_tie_is_log2_over_logc() -> None:
    logits = torch.full((19, 1, 1), -1e4)
    logits[0] = logits[1] = 0.0
    assert float(normalized_entropy(logits)[0, 0]) == pytest.approx(np.log(2) / np.log(19), 1e-5)


def test_frame_score_rare_factor() -> None:
    ent = np.full((4, 4), 0.4, dtype=np.float32)
    none_rare = np.array([[0, 1], [2, 8]])  # road, sidewalk, building, vegetation
    two_rare = np.array([[0, 3], [4, 4]])  # wall and fence are rare
    assert rare_factor(none_rare) == pytest.approx(0.5)
    assert frame_score(ent, none_rare) == pytest.approx(0.4 * 0.5)
    assert frame_score(ent, two_rare) == pytest.approx(0.4 * (2 / 11 + 0.5))
    all_rare = np.array(RARE_CLASSES)
    assert frame_score(ent, all_rare) == pytest.approx(0.4 * 1.5)


@pytest.mark.parametrize("seed", range(6))
def test_sat_matches_average_pool_on_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 60, size=2)
    emap = rng.random((h, w)).astype(np.float32)
    wh, ww = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
    y, x, m = hardest_window(emap, wh, ww)
    ry, rx, rm = hardest_window_reference(emap, wh, ww)
    assert (y, x) == (ry, rx)
    assert m == pytest.approx(rm, abs=1e-4)
    assert m == pytest.approx(float(emap[y : y + wh, x : x + ww].mean()), abs=1e-5)
    assert 0 <= y <= h - wh and 0 <= x <= w - ww


@pytest.mark.parametrize(("cy", "cx"), [(5, 5), (20, 33), (29, 39), (0, 39)])
def test_sat_matches_average_pool_on_smooth_maps(cy: int, cx: int) -> None:
    yy, xx = np.mgrid[0:30, 0:40]
    emap = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 60.0).astype(np.float32)
    y, x, m = hardest_window(emap, 15, 20)
    ry, rx, rm = hardest_window_reference(emap, 15, 20)
    assert (y, x) == (ry, rx)
    assert m == pytest.approx(rm, abs=1e-4)
    assert 0 <= y <= 15 and 0 <= x <= 20
    # the window covers the peak
    assert y <= cy < y + 15 and x <= cx < x + 20


def test_window_larger_than_map_is_clamped() -> None:
    emap = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert hardest_window(emap, 10, 10) == (0, 0, pytest.approx(5.5))


def test_mine_maps_the_hard_corner_back_to_frame_pixels() -> None:
    logits = torch.full((19, 30, 40), -10.0)
    logits[0] = 10.0  # confident road everywhere
    logits[:, 15:, 20:] = 0.0  # uncertain bottom-right quarter
    result = mine(logits, (480, 640), region_frac=0.5)
    assert result.box == (320, 240, 320, 240)
    assert result.region_entropy == pytest.approx(1.0, abs=1e-5)
    assert result.mean_entropy == pytest.approx(0.25, abs=1e-3)
    assert result.score == pytest.approx(result.mean_entropy * 0.5, rel=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_mine_box_always_inside_the_frame(seed: int) -> None:
    rng = np.random.default_rng(seed)
    low_h, low_w = (int(v) for v in rng.integers(3, 40, size=2))
    frame_h, frame_w = (int(v) for v in rng.integers(20, 700, size=2))
    frac = float(rng.uniform(0.1, 1.0))
    logits = torch.from_numpy(rng.normal(size=(19, low_h, low_w)).astype(np.float32)) * 3
    x, y, w, h = mine(logits, (frame_h, frame_w), frac).box
    assert (w, h) == (round(frac * frame_w), round(frac * frame_h))
    assert x >= 0 and x + w <= frame_w and y >= 0 and y + h <= frame_h


def test_mine_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="region_frac"):
        mine(torch.zeros(19, 4, 4), (40, 40), region_frac=0.0)


def test_mine_takes_the_window_a_rule_picks_and_refuses_one_outside() -> None:
    logits = torch.zeros(19, 8, 8)
    logits[0, :4, :4] = 10.0  # confident top-left: the hard part is elsewhere
    hardest = mine(logits, (80, 80), 0.5)
    picked = mine(logits, (80, 80), 0.5, window_rule=lambda ent, win: (0, 0))
    assert hardest.box != (0, 0, 40, 40) and picked.box == (0, 0, 40, 40)
    assert picked.region_entropy < hardest.region_entropy
    assert picked.score == hardest.score  # the frame's score does not depend on the window
    with pytest.raises(ValueError, match="outside"):
        mine(logits, (80, 80), 0.5, window_rule=lambda ent, win: (5, 0))


def test_grid_spreader_uses_every_position_before_repeating_one() -> None:
    from models.selection import GridSpreader, spread_windows

    rng = np.random.default_rng(0)
    maps = [rng.random((30, 40)).astype(np.float32) for _ in range(20)]
    spreader = GridSpreader()
    chosen = [spreader.choose(m, (15, 20)) for m in maps]
    assert len(set(chosen[:9])) == 9 and len(set(chosen[9:18])) == 9
    assert chosen == spread_windows(maps, (15, 20))  # the batch rule is the same spreader
    counts = list(spreader.used.values())
    assert max(counts) - min(counts) <= 1
    with pytest.raises(ValueError, match="grid"):
        GridSpreader(0)
