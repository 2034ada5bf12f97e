"""Core-set (k-center greedy) selection over grid-window features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.coreset import grid_cells, select_kcenter, window_features
from models.mining import window_box
from models.selection import budget_count


def _unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def test_kcenter_takes_the_budget_one_window_per_frame_and_skips_duplicates() -> None:
    a, b, c = _unit([1, 0, 0]), _unit([0, 1, 0]), _unit([0, 0, 1])
    # frames 0-3 show only `a` (the same stretch of road), frame 4 has `b`, frame 9 has `c`
    frames = [np.stack([a, a]) for _ in range(10)]
    frames[4] = np.stack([a, b])
    frames[9] = np.stack([c, a])
    picks = select_kcenter(frames, 0.3)
    assert len(picks) == budget_count(0.3, 10) == 3
    assert len({f for f, _ in picks}) == 3  # never two windows of one frame
    assert {(4, 1), (9, 0)} <= set(picks)  # both unusual windows, before any second `a`
    assert select_kcenter(frames, 0.3) == picks  # deterministic


def test_kcenter_reference_steers_away_from_what_is_already_labelled() -> None:
    a, b = _unit([1, 0]), _unit([0, 1])
    frames = [np.stack([a]), np.stack([b]), np.stack([_unit([1, 0.1])])]
    assert select_kcenter(frames, 0.2, reference=np.stack([a])) == [(1, 0)]
    assert select_kcenter(frames, 0.2, reference=np.stack([b]))[0][0] in (0, 2)


def test_kcenter_refuses_ragged_features_and_handles_no_frames() -> None:
    assert select_kcenter([], 0.2) == []
    with pytest.raises(ValueError, match="same length"):
        select_kcenter([np.ones((2, 3)), np.ones((2, 4))], 0.5)
    with pytest.raises(ValueError, match="ratio"):
        select_kcenter([np.ones((2, 3))], 0.0)


def test_window_features_are_unit_means_of_windows_inside_the_map() -> None:
    high = torch.zeros(4, 30, 40)
    high[0, :15] = 1.0  # top half "sky", bottom half "road"
    high[1, 15:] = 1.0
    feats = window_features(high, region_frac=0.5, grid=3)
    cells, win = grid_cells((30, 40), region_frac=0.5, grid=3)
    assert feats.shape == (9, 4) and win == (15, 20)
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert feats[0].argmax() == 0 and feats[-1].argmax() == 1  # top-left sky, bottom-right road
    for y, x in cells:
        assert 0 <= y <= 30 - 15 and 0 <= x <= 40 - 20
        bx, by, bw, bh = window_box((y, x), win, (30, 40), (480, 640), 0.5)
        assert bx >= 0 and by >= 0 and bx + bw <= 640 and by + bh <= 480
        assert (bw, bh) == (320, 240)  # a quarter of the frame
    with pytest.raises(ValueError, match="CxHxW"):
        window_features(torch.zeros(30, 40))
