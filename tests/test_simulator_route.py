"""Routes: stretches of different looks, deterministic per seed, rare classes in some only."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from common.classes import SIDEWALK, TRAFFIC_SIGN, WALL
from simulator.drive import Drive, frame_from_id
from simulator.looks import ROUTE_LOOKS, SIGN_POST, cell_objects
from simulator.oracle import OracleAnnotator
from simulator.route import MAX_STRETCH_M, MIN_STRETCH_M, route_plan
from simulator.scene import SPEED, START, route_stretch

W, H = 160, 120


def test_route_frames_are_deterministic_and_addressable_by_id() -> None:
    a = Drive("route", seed=4, width=W, height=H).frame(333)
    b = Drive("route", seed=4, width=W, height=H).frame(333)
    assert a.frame_id == "route-s4-w160x120-i333"
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    again = frame_from_id(a.frame_id)  # the oracle re-renders regions from their frame ids
    assert np.array_equal(again.label, a.label)
    crop = OracleAnnotator().label_crop(a.frame_id, (10, 20, 30, 40))
    assert np.array_equal(crop, a.label[20:60, 10:40])
    other = Drive("route", seed=5, width=W, height=H).frame(333)
    assert not np.array_equal(other.image, a.image)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_route_plan_mixes_every_look_and_never_repeats_one(seed: int) -> None:
    plan = route_plan(seed, 0.0)[:40]
    assert route_plan(seed, 0.0)[:40] == plan  # derived from the seed alone
    assert {st.look for st in plan[:20]} == set(ROUTE_LOOKS)
    for prev, cur in itertools.pairwise(plan):
        assert prev.look != cur.look and prev.s1 == cur.s0
        assert cur.previous_light == prev.light  # weather carries over and fades in
    for st in plan:
        assert MIN_STRETCH_M <= st.s1 - st.s0 <= (60.0 if st.look == "crossing" else MAX_STRETCH_M)
    # the frame index maps onto the plan
    mid = plan[3]
    index = round(((mid.s0 + mid.s1) / 2 - START) / SPEED)
    assert route_stretch(seed, index) == mid.look


def test_rare_objects_live_in_some_looks_only() -> None:
    kinds: dict[str, Counter[str]] = {}
    for look in ROUTE_LOOKS:
        c: Counter[str] = Counter()
        for k in range(300):
            for o in cell_objects(7, look, k):
                c["sign" if o.kind == "pole" and o.style == SIGN_POST else o.kind] += 1
        kinds[look] = c
    assert {look for look, c in kinds.items() if c["parapet"]} == {"crossing"}
    assert {look for look, c in kinds.items() if c["sign"]} == {"village", "crossing"}
    assert {look for look, c in kinds.items() if c["facade"]} == {"farmyard", "village"}
    assert {look for look, c in kinds.items() if c["car"]} == {"farmyard", "village"}
    assert kinds["fields"]["fence"] > kinds["farmyard"]["fence"] > 0 == kinds["forest"]["fence"]
    assert kinds["forest"]["tree"] + kinds["forest"]["conifer"] > 3 * (
        kinds["fields"]["tree"] + kinds["fields"]["conifer"]
    )


def test_rare_classes_show_in_the_stretches_that_bring_them() -> None:
    """Pixel shares by the look of the stretch a frame is in (a frame also sees up to 140 m of
    the stretches ahead, so a class may show, small and far, just before its stretch)."""
    seed = 3
    plan = route_plan(seed, 0.0)[:12]
    drive = Drive("route", seed=seed, width=W, height=H)
    share: dict[str, np.ndarray] = {}
    for st in plan:
        first = max(0, int((st.s0 - START) / SPEED) + 3)
        for i in range(first, int((st.s1 - START) / SPEED), 12):
            counts = np.bincount(drive.frame(i).label.ravel(), minlength=256)[:19]
            share[st.look] = share.get(st.look, np.zeros(19)) + counts / counts.sum()
    share = {look: v / v.sum() for look, v in share.items()}
    assert set(share) == set(ROUTE_LOOKS)
    # (class, the looks that bring it, the looks it may also show in a little)
    for cls, home, also in ((WALL, {"crossing"}, set()),
                            (TRAFFIC_SIGN, {"village", "crossing"}, set()),
                            (SIDEWALK, {"village"}, {"crossing"})):  # fmt: skip
        inside = min(share[look][cls] for look in home)
        outside = max(v[cls] for look, v in share.items() if look not in home | also)
        assert inside > 0 and inside > 5 * outside, (cls, inside, outside)
