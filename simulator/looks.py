"""The looks of a rural route's stretches and the objects each puts along the road.

A real rural route is not one texture repeated: it runs through forest, open fields, farmyards,
village edges and crossings, and its rare classes live in some of them only. Each look is a
rule for one route cell's objects (seeded by seed, cell and look, so any frame's world is known
without the frames before it) and the ground map it drives on:

| look | ground | what it adds | rare classes it brings |
| --- | --- | --- | --- |
| forest | dirt or gravel track | dense trees and forest edges close to the road | - |
| fields | dirt or gravel track | open grass, pasture fences, wooden power poles, far tree lines | fence, pole |
| farmyard | gravel yard road | barns and houses, parked vehicles, fences, people | fence, pole, person, car |
| village | asphalt with sidewalks | houses along the street, poles with signs, people, parked cars | sidewalk, pole, traffic sign, person, car |
| crossing | asphalt | a bridge's parapet walls, poles with signs, far tree lines | wall, pole, traffic sign |

The ``urban`` and ``rural`` looks are the two domains of the plain drives (``simulator.world``).
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from simulator.textures import ROAD_HALF_WIDTH, SIDEWALK_WIDTH
from simulator.world import CELL, Obj, _rural_cell, _urban_cell

ROUTE_LOOKS = ("forest", "fields", "farmyard", "village", "crossing")
#: The ground map domain each look drives on.
GROUND_DOMAIN = {
    "urban": "urban",
    "rural": "rural",
    "forest": "rural",
    "fields": "rural",
    "farmyard": "rural",
    "village": "urban",
    "crossing": "urban",
}
#: Pole styles: 0 a street lamp arm, 1 a wooden power pole, 2 a post with a traffic sign.
SIGN_POST = 2


def _tree(rng: np.random.Generator, s: float, x: float, conifer_share: float) -> Obj:
    kind = "conifer" if rng.random() < conifer_share else "tree"
    return Obj(
        kind, s + rng.uniform(0, CELL), 0.0, x, rng.uniform(5.0, 12.0), rng.uniform(1.6, 3.0), 1
    )


def _person(rng: np.random.Generator, s: float, x: float) -> Obj:
    return Obj(
        "person",
        s + rng.uniform(0, CELL),
        0.0,
        x,
        rng.uniform(1.6, 1.9),
        0.5,
        int(rng.integers(0, 64)),
    )


def _car(rng: np.random.Generator, s: float, x: float) -> Obj:
    return Obj("car", s + rng.uniform(0, 3.5), 0.0, x, 1.45, 1.8, int(rng.integers(0, 8)))


def _forest_cell(seed: int, k: int) -> tuple[Obj, ...]:
    rng = np.random.default_rng((seed, k, 311))
    rhw = ROAD_HALF_WIDTH["rural"]
    s = k * CELL
    out: list[Obj] = []
    for sgn in (-1.0, 1.0):
        if k % 2 == 0:
            x = sgn * (rhw + rng.uniform(3.0, 7.0))
            out.append(Obj("vegwall", s, s + 2 * CELL, x, rng.uniform(12, 20), 0.0, 1))
        for _ in range(int(rng.integers(2, 5))):
            out.append(_tree(rng, s, sgn * (rhw + rng.uniform(1.2, 6.0)), 0.7))
        if rng.random() < 0.01:
            out.append(_person(rng, s, sgn * (rhw + 0.6)))
    return tuple(out)


def _fields_cell(seed: int, k: int) -> tuple[Obj, ...]:
    rng = np.random.default_rng((seed, k, 312))
    rhw = ROAD_HALF_WIDTH["rural"]
    s = k * CELL
    out: list[Obj] = []
    for side, sgn in enumerate((-1.0, 1.0)):
        run = np.random.default_rng((seed, k // 6, side, 313))  # fences run for ~50 m
        if k % 3 == 0 and run.random() < 0.6:
            out.append(
                Obj("vegwall", s, s + 3 * CELL, sgn * rng.uniform(45, 80), rng.uniform(8, 14), 0, 2)
            )
        if run.random() < 0.65:
            xf = sgn * (rhw + 1.0 + 1.5 * run.random())
            out.append(Obj("fence", s, s + CELL / 2, xf, 1.25, 0.0, 0))
            out.append(Obj("fence", s + CELL / 2, s + CELL, xf, 1.25, 0.0, 0))
        if rng.random() < 0.25:
            out.append(_tree(rng, s, sgn * (rhw + rng.uniform(4.0, 14.0)), 0.2))
        if rng.random() < 0.02:
            out.append(_person(rng, s, sgn * (rhw + 0.7)))
    if k % 5 == 0:  # a power line: a wooden pole every 40 m on one side
        line = 1.0 if np.random.default_rng((seed, 314)).random() < 0.5 else -1.0
        out.append(Obj("pole", s + rng.uniform(0, 2), 0.0, line * (rhw + 2.5), 8.5, 0.24, 1))
    return tuple(out)


def _farmyard_cell(seed: int, k: int) -> tuple[Obj, ...]:
    rng = np.random.default_rng((seed, k, 321))
    rhw = ROAD_HALF_WIDTH["rural"]
    s = k * CELL
    out: list[Obj] = []
    for sgn in (-1.0, 1.0):
        if rng.random() < 0.6:
            x = sgn * (rhw + rng.uniform(4.0, 9.0))
            out.append(
                Obj("facade", s, s + CELL, x, rng.uniform(5, 9), 10.0, int(rng.integers(0, 5)))
            )
        if rng.random() < 0.3:
            out.append(_car(rng, s, sgn * (rhw + rng.uniform(1.2, 2.8))))
        if rng.random() < 0.4:
            xf = sgn * (rhw + 1.0 + rng.random())
            out.append(Obj("fence", s, s + CELL / 2, xf, 1.25, 0.0, 0))
        if rng.random() < 0.15:
            out.append(_person(rng, s, sgn * (rhw + rng.uniform(0.6, 3.0))))
        if rng.random() < 0.35:
            out.append(_tree(rng, s, sgn * (rhw + rng.uniform(3.0, 10.0)), 0.3))
    if rng.random() < 0.15:
        out.append(
            Obj("pole", s + rng.uniform(0, CELL), 0.0, rhw + 2.2, rng.uniform(7, 9), 0.22, 1)
        )
    return tuple(out)


def _village_cell(seed: int, k: int) -> tuple[Obj, ...]:
    rng = np.random.default_rng((seed, k, 331))
    rhw = ROAD_HALF_WIDTH["urban"]
    s = k * CELL
    out: list[Obj] = []
    for sgn in (-1.0, 1.0):
        if rng.random() < 0.75:
            gap = rng.uniform(1.5, 4.0) if rng.random() < 0.4 else 0.0
            x = sgn * (rhw + SIDEWALK_WIDTH + rng.uniform(0.5, 3.0))
            out.append(
                Obj(
                    "facade",
                    s + gap,
                    s + CELL,
                    x,
                    rng.uniform(5, 10),
                    9.0,
                    int(rng.integers(0, 10)),
                )
            )
        if rng.random() < 0.3:
            out.append(_car(rng, s, sgn * (rhw - 0.95)))
        if rng.random() < 0.3:
            x = sgn * (rhw + 0.45)
            out.append(Obj("pole", s + rng.uniform(0, CELL), 0.0, x, rng.uniform(3.0, 3.6), 0.1, 2))
        if rng.random() < 0.3:
            out.append(_person(rng, s, sgn * (rhw + 0.9 + rng.uniform(0, SIDEWALK_WIDTH - 1.5))))
        if rng.random() < 0.25:
            out.append(_tree(rng, s, sgn * (rhw + 1.4), 0.0))
    return tuple(out)


def _crossing_cell(seed: int, k: int) -> tuple[Obj, ...]:
    rng = np.random.default_rng((seed, k, 341))
    rhw = ROAD_HALF_WIDTH["urban"]
    s = k * CELL
    out: list[Obj] = []
    for sgn in (-1.0, 1.0):
        out.append(Obj("parapet", s, s + CELL, sgn * (rhw + 0.3), 1.1, 0.0, 0))
        if k % 3 == 0:
            out.append(
                Obj("vegwall", s, s + 3 * CELL, sgn * rng.uniform(35, 60), rng.uniform(8, 14), 0, 2)
            )
        if rng.random() < 0.3:
            out.append(Obj("pole", s + rng.uniform(0, CELL), 0.0, sgn * (rhw + 0.1), 3.2, 0.1, 2))
    if rng.random() < 0.25:
        out.append(
            Obj("pole", s + rng.uniform(0, CELL), 0.0, rhw + 0.1, rng.uniform(6, 8), 0.16, 0)
        )
    return tuple(out)


_CELLS: dict[str, Callable[[int, int], tuple[Obj, ...]]] = {
    "urban": _urban_cell,
    "rural": _rural_cell,
    "forest": lru_cache(maxsize=4096)(_forest_cell),
    "fields": lru_cache(maxsize=4096)(_fields_cell),
    "farmyard": lru_cache(maxsize=4096)(_farmyard_cell),
    "village": lru_cache(maxsize=4096)(_village_cell),
    "crossing": lru_cache(maxsize=4096)(_crossing_cell),
}


def cell_objects(seed: int, look: str, cell: int) -> tuple[Obj, ...]:
    """Objects of one route cell under a look; cached, since a drive sees each cell ~30 times."""
    return _CELLS[look](seed, cell)
