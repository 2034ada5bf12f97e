"""Selection rules (budget, order, windows) and the robot using them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.mining import mine, window_box
from models.selection import (
    budget_count,
    random_window,
    select_diverse,
    select_random,
    select_stratified,
    select_top,
    spread_windows,
)
from robot_agent.candidates import Candidate
from robot_agent.transfer import select


@pytest.mark.parametrize(
    ("ratio", "n", "k"),
    [(0.2, 5, 1), (0.2, 10, 2), (0.2, 11, 3), (0.2, 150, 30), (0.2, 300, 60), (1.0, 7, 7),
     (0.05, 1, 1), (0.3, 10, 3), (0.2, 0, 0)],
)  # fmt: skip
def test_budget_is_ceil_without_float_creep(ratio: float, n: int, k: int) -> None:
    assert budget_count(ratio, n) == k
    assert len(select_top(list(range(n)), ratio)) == k
    assert len(select_diverse([1.0] * n, ratio)) == k
    assert len(select_random(n, ratio, np.random.default_rng(0))) == k


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_budget_rejects_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        budget_count(ratio, 10)


def test_top_is_hardest_first_with_stable_ties() -> None:
    scores = [0.1, 0.9, 0.5, 0.9, 0.3, 0.7, 0.5, 0.2, 0.0, 0.4]
    assert select_top(scores, 0.2) == [1, 3]  # tie: the earlier one first
    assert select_top(scores, 0.5) == [1, 3, 5, 2, 6]
    assert select_top(scores, 1.0) == sorted(range(10), key=lambda i: -scores[i])


def test_the_robot_uses_the_same_rule() -> None:
    rng = np.random.default_rng(3)
    scores = rng.choice([0.1, 0.2, 0.3, 0.4], size=37).tolist()  # many ties
    ts = rng.permutation(37).astype(float).tolist()
    cands = [
        Candidate(f"r{i}", f"f{i}", s, 0.5, 0.5, (0, 0, 2, 2), (4, 4), "v", t)
        for i, (s, t) in enumerate(zip(scores, ts, strict=True))
    ]
    chosen = select(cands, 0.2)
    assert len(chosen) == math.ceil(0.2 * 37)
    expected = sorted(cands, key=lambda c: (-c.score, c.ts))[: len(chosen)]
    assert [c.region_id for c in chosen] == [c.region_id for c in expected]
    by_ts = sorted(cands, key=lambda c: c.ts)
    assert [c.region_id for c in chosen] == [
        by_ts[i].region_id for i in select_top([c.score for c in by_ts], 0.2)
    ]


def test_random_is_distinct_and_seeded() -> None:
    a = select_random(50, 0.2, np.random.default_rng(7))
    b = select_random(50, 0.2, np.random.default_rng(7))
    assert a == b and len(set(a)) == 10 and all(0 <= i < 50 for i in a)


def test_diverse_skips_near_duplicates_then_fills_the_budget() -> None:
    # a hard stretch (frames 10..14) and a second, softer one (30..31)
    scores = [0.0] * 40
    for i, s in zip(range(10, 15), [0.9, 0.95, 1.0, 0.95, 0.9], strict=True):
        scores[i] = s
    scores[30], scores[31] = 0.8, 0.7
    top = select_top(scores, 0.1)  # 4 frames
    assert top == [12, 11, 13, 10]  # all on one stretch
    div = select_diverse(scores, 0.1, min_gap=3)
    assert div == [12, 30, 0, 3]  # one per stretch, hardest first, then the next far-apart ones
    # when the gaps leave too few frames, the skipped ones fill the budget, hardest first
    assert select_diverse([0.5, 0.9, 1.0, 0.8, 0.7, 0.6], 0.5, min_gap=3) == [2, 5, 1]
    # positions as timestamps: gaps in seconds
    ts = [i * 0.5 for i in range(40)]
    assert select_diverse(scores, 0.1, ts, min_gap=1.5) == div
    assert select_diverse(scores, 0.1, min_gap=0) == top
    with pytest.raises(ValueError, match="positions"):
        select_diverse(scores, 0.1, [0.0, 1.0])


def test_windows_lie_inside_the_frame() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        x, y, w, h = random_window((480, 640), (240, 320), rng)
        assert (w, h) == (320, 240) and 0 <= x <= 320 and 0 <= y <= 240
    seen = {random_window((480, 640), (240, 320), rng)[:2] for _ in range(200)}
    assert len(seen) > 150  # spread out, not a fixed corner
    assert random_window((10, 10), (40, 40), rng) == (0, 0, 10, 10)  # clamped
    # the robot's mined box is inside the frame too, and a quarter of it (5% at 20% frames)
    import torch

    for seed in range(20):
        logits = torch.randn(19, 30, 40, generator=torch.Generator().manual_seed(seed))
        bx, by, bw, bh = mine(logits, (480, 640), 0.5).box
        assert (bw, bh) == (320, 240) and 0 <= bx <= 320 and 0 <= by <= 240


def test_spread_windows_use_the_grid_evenly_and_the_hardest_free_cell() -> None:
    # every map is hardest at the bottom right: the mined window would always sit there
    maps = []
    for i in range(18):
        ent = np.zeros((30, 40), dtype=np.float32)
        ent[15:, 20:] = 1.0
        ent[0, i % 40] = 0.5  # a little per-map variation
        maps.append(ent)
    spots = spread_windows(maps, (15, 20), grid=3)
    assert spots[0] == (15, 20)  # the first frame gets its hardest window
    counts = {s: spots.count(s) for s in set(spots)}
    assert len(counts) == 9 and set(counts.values()) == {2}  # 18 windows, 9 cells, 2 each
    for y, x in spots:  # every window inside the map; its frame box inside the frame
        assert 0 <= y <= 15 and 0 <= x <= 20
        bx, by, bw, bh = window_box((y, x), (15, 20), (30, 40), (480, 640), 0.5)
        assert (bw, bh) == (320, 240) and 0 <= bx <= 320 and 0 <= by <= 240


def _hard_stretch_scores() -> list[float]:
    """50 frames in processing order; the hardest ten are all in frames 10-19."""
    scores = [0.1] * 50
    for i in range(10, 20):
        scores[i] = 1.0 + i / 100
    return scores


def _candidates(scores: list[float]) -> list[Candidate]:
    """One candidate per score, frame i processed at ts i."""
    return [
        Candidate(f"r{i}", f"f{i}", s, 0.5, 0.5, (0, 0, 2, 2), (4, 4), "v", float(i))
        for i, s in enumerate(scores)
    ]


def test_robot_diverse_rule_spreads_over_the_route() -> None:
    cands = _candidates(_hard_stretch_scores())
    top = [int(c.frame_id[1:]) for c in select(cands, 0.2)]
    diverse = [int(c.frame_id[1:]) for c in select(cands, 0.2, "diverse")]
    assert len(top) == len(diverse) == 10
    assert sorted(top) == list(range(10, 20))
    assert diverse[:2] == [19, 14]  # hardest first, then the hardest 5 or more frames away
    gaps = [abs(a - b) for i, a in enumerate(diverse) for b in diverse[:i]]
    assert min(gaps) >= 5  # the low-score frames elsewhere fill the rest, still spread
    with pytest.raises(ValueError, match="selection rule"):
        select(cands, 0.2, "newest")


def test_stratified_takes_the_hardest_of_each_equal_stretch() -> None:
    scores = _hard_stretch_scores()  # budget 10: stretches of 5
    scores[33] = 0.5  # the hardest of stretch 30-34
    picked = select_stratified(scores, 0.2)
    assert len(picked) == budget_count(0.2, 50) == 10
    assert sorted(picked) == [0, 5, 14, 19, 20, 25, 33, 35, 40, 45]  # ties: the earlier
    assert picked[:3] == [19, 14, 33]  # hardest first
    # positions say the order: reversed positions give the mirrored stretches
    rev = select_stratified(scores[::-1], 0.2, positions=list(range(49, -1, -1)))
    assert sorted(49 - i for i in rev) == sorted(picked)
    # uneven counts: 7 frames, budget 2 -> stretches of 4 and 3 (round(3.5) = 4)
    assert sorted(select_stratified([1, 2, 3, 9, 5, 6, 4], 0.25)) == [3, 5]
    assert select_stratified([], 0.2) == []
    with pytest.raises(ValueError, match="positions"):
        select_stratified([1.0, 2.0], 0.5, positions=[0.0])


def test_robot_stratified_rule_covers_the_route_in_processing_order() -> None:
    cands = _candidates(_hard_stretch_scores())
    shuffled = cands[::2] + cands[1::2]  # the store's order does not matter: ts does
    frames = [int(c.frame_id[1:]) for c in select(shuffled, 0.2, "stratified")]
    assert sorted(frames) == [0, 5, 14, 19, 20, 25, 30, 35, 40, 45]
