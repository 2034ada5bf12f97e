"""A rural route as a sequence of stretches of different looks, derived from the seed alone.

What real rural routes look like, and so what this models (docs/adaptation.md, "Routes"):
- a route changes surroundings every few hundred metres: forest track, open fields, farmyards,
  village edges, crossings (``simulator.looks``); the same look comes back later, never
  twice in a row;
- each stretch has its own ground (dirt or gravel, grass colour) and weather, which changes
  more slowly than the surroundings (it persists into the next stretch half the time) and
  fades in over the first metres of a stretch;
- rare classes live in some stretches only (signs and sidewalks in villages, walls at
  crossings, vehicles and people in farmyards and villages).

Stretch j's look, length, ground and weather come from an RNG seeded by (seed, j), so frame i
of route ``seed`` is known without rendering the frames before it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from simulator.looks import GROUND_DOMAIN, ROUTE_LOOKS
from simulator.world import ROUTE_LIGHTS

#: Stretch lengths in metres (at 0.4 m a frame: 100 to 325 frames).
MIN_STRETCH_M, MAX_STRETCH_M = 40.0, 130.0
#: Share of crossings in the look draw: bridges are short and rare.
_LOOK_WEIGHTS = {"forest": 0.25, "fields": 0.27, "farmyard": 0.18, "village": 0.2, "crossing": 0.1}
#: Metres over which a stretch's weather fades in from the previous one.
LIGHT_FADE_M = 8.0
_MAX_STRETCHES = 4096  # about 350 km of route


@dataclass(frozen=True)
class Stretch:
    """One stretch of a route: its look, where it starts and ends (route metres), its ground
    variant and its weather (an index into ``simulator.world.ROUTE_LIGHTS``)."""

    index: int
    look: str
    s0: float
    s1: float
    ground_variant: int
    light: int
    previous_light: int

    @property
    def ground(self) -> tuple[str, int]:
        """(domain, variant) of the ground map this stretch drives on."""
        return GROUND_DOMAIN[self.look], self.ground_variant


@lru_cache(maxsize=64)
def route_plan(seed: int, start: float) -> tuple[Stretch, ...]:
    """The first stretches of route ``seed``, the first starting at route metre ``start``."""
    looks = list(_LOOK_WEIGHTS)
    weights = np.array([_LOOK_WEIGHTS[k] for k in looks])
    out: list[Stretch] = []
    s, look, weather = start, "", -1
    for j in range(_MAX_STRETCHES):
        rng = np.random.default_rng((seed, j, 401))
        w = np.where(np.array(looks) == look, 0.0, weights)  # never the same look twice
        look = looks[int(rng.choice(len(looks), p=w / w.sum()))]
        length = float(rng.uniform(MIN_STRETCH_M, MAX_STRETCH_M))
        if look == "crossing":
            length = min(length, 60.0)  # a bridge is short
        previous = weather if weather >= 0 else int(rng.integers(0, len(ROUTE_LIGHTS)))
        weather = previous if rng.random() < 0.5 else int(rng.integers(0, len(ROUTE_LIGHTS)))
        out.append(Stretch(j, look, s, s + length, int(rng.integers(0, 6)), weather, previous))
        s += length
    assert set(ROUTE_LOOKS) == set(looks)
    return tuple(out)


@lru_cache(maxsize=64)
def _starts(seed: int, start: float) -> tuple[float, ...]:
    return tuple(st.s0 for st in route_plan(seed, start))


def stretch_at(seed: int, start: float, s: float) -> Stretch:
    """The stretch of route ``seed`` at route metre ``s`` (before the first: the first)."""
    plan = route_plan(seed, start)
    j = bisect.bisect_right(_starts(seed, start), s) - 1
    if j >= len(plan) or (j == len(plan) - 1 and s >= plan[-1].s1):
        raise ValueError(f"route position {s:.0f} m is past the route's end ({plan[-1].s1:.0f} m)")
    return plan[max(0, j)]


def light_fade(stretch: Stretch, s: float) -> int:
    """How far (0..4) the weather has faded in from the previous stretch's at route metre s."""
    return min(4, max(0, math.floor(4 * (s - stretch.s0) / LIGHT_FADE_M) + 1))
