"""The route a camera drives along: road curve, light and objects, all derived from the seed.

Objects live in cells of ``CELL`` metres of route; each cell's contents come from an RNG seeded
by (seed, cell, domain), so any frame's world is known without simulating the frames before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from simulator.textures import ROAD_HALF_WIDTH, SIDEWALK_WIDTH

CELL = 8.0
DOMAINS = ("urban", "rural")


@dataclass(frozen=True)
class Obj:
    """One object along the route; ``x`` is the signed lateral offset from the road centre."""

    kind: str  # facade, vegwall, fence, car, pole, person, tree, conifer
    s0: float  # route position of the near end
    s1: float  # route position of the far end (== s0 for thin objects)
    x: float
    height: float
    size: float  # width, or crown radius for trees
    style: int


@dataclass(frozen=True)
class Light:
    """Colour and haze of a place and time of day."""

    mul: tuple[float, float, float]
    haze: tuple[float, float, float]
    haze_dist: float  # metres at which haze reaches 63 %
    haze_max: float
    zenith: tuple[float, float, float]
    horizon: tuple[float, float, float]
    sun_left: bool


_URBAN_LIGHTS = (
    Light((1.0, 1.0, 1.0), (200, 212, 228), 320, 0.6, (70, 120, 200), (185, 205, 230), True),
    Light((0.86, 0.87, 0.9), (185, 190, 198), 220, 0.6, (140, 150, 165), (195, 198, 205), False),
    Light((1.05, 0.98, 0.9), (215, 205, 195), 280, 0.6, (80, 115, 185), (215, 205, 200), False),
    Light((1.1, 1.08, 1.05), (205, 215, 230), 360, 0.5, (60, 110, 205), (175, 200, 235), True),
)
_RURAL_LIGHTS = (
    Light((1.12, 0.96, 0.74), (228, 206, 168), 95, 0.8, (150, 160, 175), (240, 215, 170), True),
    Light((0.82, 0.87, 0.9), (205, 208, 212), 55, 0.85, (175, 182, 190), (215, 217, 218), False),
    Light((1.02, 0.86, 0.7), (232, 182, 140), 110, 0.8, (105, 110, 150), (240, 175, 130), False),
    Light((0.92, 0.96, 0.84), (188, 194, 180), 80, 0.8, (160, 168, 165), (200, 205, 190), True),
)


#: Weather a route stretch can have beyond the four rural lights: fog and a hard noon sun.
_ROUTE_WEATHER = (
    Light((0.78, 0.8, 0.84), (196, 200, 206), 32, 0.92, (185, 190, 196), (205, 208, 212), False),
    Light((1.18, 1.14, 1.02), (214, 222, 236), 160, 0.55, (50, 105, 210), (170, 200, 240), True),
)
#: Every light a route stretch may take (``simulator.route``): the rural ones, then the weather.
ROUTE_LIGHTS = (*_RURAL_LIGHTS, *_ROUTE_WEATHER)


def blend_lights(a: Light, b: Light, t: float) -> Light:
    """Light ``t`` of the way from ``a`` to ``b`` (t in 0..1); the sun side flips at half way."""

    def mix(p: tuple[float, ...], q: tuple[float, ...]) -> tuple[float, float, float]:
        r = [pi * (1 - t) + qi * t for pi, qi in zip(p, q, strict=True)]
        return (r[0], r[1], r[2])

    return Light(
        mix(a.mul, b.mul),
        mix(a.haze, b.haze),
        a.haze_dist * (1 - t) + b.haze_dist * t,
        a.haze_max * (1 - t) + b.haze_max * t,
        mix(a.zenith, b.zenith),
        mix(a.horizon, b.horizon),
        a.sun_left if t < 0.5 else b.sun_left,
    )


@lru_cache(maxsize=64)
def light(urban_variant: int, rural_variant: int, alpha_q: int) -> Light:
    """Light blended between the urban and the rural one; ``alpha_q`` in 0..4 (4 = rural)."""
    a = _URBAN_LIGHTS[urban_variant % len(_URBAN_LIGHTS)]
    b = _RURAL_LIGHTS[rural_variant % len(_RURAL_LIGHTS)]
    return blend_lights(a, b, alpha_q / 4.0)


@lru_cache(maxsize=64)
def route_light(previous: int, current: int, alpha_q: int) -> Light:
    """A route stretch's light (``ROUTE_LIGHTS`` indices), ``alpha_q``/4 of the way in from the
    previous stretch's (4 = fully the current one)."""
    return blend_lights(ROUTE_LIGHTS[previous], ROUTE_LIGHTS[current], alpha_q / 4.0)


@dataclass(frozen=True)
class World:
    """Per-seed constants: road curve, camera rig and light variants."""

    seed: int
    amps: tuple[float, float, float]
    lengths: tuple[float, float, float]
    phases: tuple[float, float, float]
    cam_height: float
    pitch: float
    urban_variant: int
    rural_variant: int

    def centre(self, s: np.ndarray) -> np.ndarray:
        """Lateral position of the road centre at route positions ``s``."""
        out = np.zeros_like(s)
        for a, length, ph in zip(self.amps, self.lengths, self.phases, strict=True):
            out += a * np.sin(s * (2 * math.pi / length) + ph)
        return out

    def slope(self, s: float) -> float:
        """d centre / d s at ``s`` (the camera looks along the road tangent)."""
        return sum(
            a * (2 * math.pi / length) * math.cos(s * (2 * math.pi / length) + ph)
            for a, length, ph in zip(self.amps, self.lengths, self.phases, strict=True)
        )


@lru_cache(maxsize=256)
def make_world(seed: int) -> World:
    rng = np.random.default_rng((seed, 1))
    amps = rng.uniform(2.0, 9.0, 3) * rng.choice([-1.0, 1.0], 3)
    lengths = rng.uniform(120.0, 420.0, 3)
    phases = rng.uniform(0, 2 * math.pi, 3)
    return World(
        seed=seed,
        amps=(float(amps[0]), float(amps[1]), float(amps[2])),
        lengths=(float(lengths[0]), float(lengths[1]), float(lengths[2])),
        phases=(float(phases[0]), float(phases[1]), float(phases[2])),
        cam_height=float(rng.uniform(1.35, 1.75)),
        pitch=float(rng.uniform(-0.05, 0.05)),
        urban_variant=int(rng.integers(0, 4)),
        rural_variant=int(rng.integers(0, 4)),
    )


@lru_cache(maxsize=4096)
def _urban_cell(seed: int, k: int) -> tuple[Obj, ...]:
    rng = np.random.default_rng((seed, k, 101))
    rhw = ROAD_HALF_WIDTH["urban"]
    s = k * CELL
    out: list[Obj] = []
    for sgn in (-1.0, 1.0):
        if rng.random() < 0.85:
            gap = rng.uniform(2.0, 5.0) if rng.random() < 0.25 else 0.0
            x = sgn * (rhw + SIDEWALK_WIDTH + rng.uniform(0.0, 0.6))
            out.append(
                Obj(
                    "facade",
                    s + gap,
                    s + CELL,
                    x,
                    rng.uniform(7, 24),
                    12.0,
                    int(rng.integers(0, 10)),
                )
            )
        if rng.random() < 0.3:
            out.append(
                Obj(
                    "car",
                    s + rng.uniform(0, 3.5),
                    0.0,
                    sgn * (rhw - 0.95),
                    1.45,
                    1.8,
                    int(rng.integers(0, 8)),
                )
            )
        if rng.random() < 0.25:
            out.append(
                Obj(
                    "pole",
                    s + rng.uniform(0, CELL),
                    0.0,
                    sgn * (rhw + 0.45),
                    rng.uniform(6.0, 8.0),
                    0.16,
                    0,
                )
            )
        if rng.random() < 0.22:
            x = sgn * (rhw + 0.9 + rng.uniform(0, SIDEWALK_WIDTH - 1.5))
            out.append(
                Obj(
                    "person",
                    s + rng.uniform(0, CELL),
                    0.0,
                    x,
                    rng.uniform(1.6, 1.9),
                    0.5,
                    int(rng.integers(0, 64)),
                )
            )
        if rng.random() < 0.1:
            out.append(
                Obj(
                    "tree",
                    s + rng.uniform(0, CELL),
                    0.0,
                    sgn * (rhw + 1.4),
                    rng.uniform(5.0, 7.0),
                    rng.uniform(1.4, 2.2),
                    0,
                )
            )
    if rng.random() < 0.22:
        out.append(
            Obj("car", s + rng.uniform(0, 3.5), 0.0, -rhw / 2, 1.45, 1.8, int(rng.integers(0, 8)))
        )
    return tuple(out)


@lru_cache(maxsize=4096)
def _rural_cell(seed: int, k: int) -> tuple[Obj, ...]:
    rng = np.random.default_rng((seed, k, 202))
    rhw = ROAD_HALF_WIDTH["rural"]
    s = k * CELL
    out: list[Obj] = []
    for side, sgn in enumerate((-1.0, 1.0)):
        run = np.random.default_rng((seed, k // 5, side, 203))
        # forest edges come in 16 m (near) and 24 m (far) pieces: fewer walls to draw
        near_wall, far_wall = rng.random() < 0.9, rng.random() < 0.85
        if k % 2 == 0 and near_wall:
            x = sgn * (rhw + rng.uniform(7.0, 16.0))
            out.append(Obj("vegwall", s, s + 2 * CELL, x, rng.uniform(8, 15), 0.0, 1))
        if k % 3 == 0 and far_wall:
            out.append(
                Obj(
                    "vegwall",
                    s,
                    s + 3 * CELL,
                    sgn * rng.uniform(30, 45),
                    rng.uniform(10, 18),
                    0.0,
                    2,
                )
            )
        if run.random() < 0.5:
            xf = sgn * (rhw + 1.2 + 0.8 * run.random())
            out.append(Obj("fence", s, s + CELL / 2, xf, 1.25, 0.0, 0))
            out.append(Obj("fence", s + CELL / 2, s + CELL, xf, 1.25, 0.0, 0))
        for _ in range(int(rng.integers(0, 3))):
            kind = "conifer" if rng.random() < 0.5 else "tree"
            x = sgn * (rhw + rng.uniform(2.5, 9.0))
            out.append(
                Obj(
                    kind,
                    s + rng.uniform(0, CELL),
                    0.0,
                    x,
                    rng.uniform(5.0, 11.0),
                    rng.uniform(1.6, 3.0),
                    1,
                )
            )
        if rng.random() < 0.04:
            out.append(
                Obj(
                    "person",
                    s + rng.uniform(0, CELL),
                    0.0,
                    sgn * (rhw + 0.7),
                    rng.uniform(1.6, 1.9),
                    0.5,
                    int(rng.integers(0, 64)),
                )
            )
        if rng.random() < 0.03:
            out.append(
                Obj(
                    "facade",
                    s,
                    s + CELL,
                    sgn * (rhw + rng.uniform(10, 14)),
                    rng.uniform(5, 8),
                    10.0,
                    1,
                )
            )
    if rng.random() < 0.2:
        out.append(
            Obj("pole", s + rng.uniform(0, CELL), 0.0, rhw + 2.2, rng.uniform(7, 9), 0.22, 1)
        )
    if rng.random() < 0.05:
        out.append(
            Obj(
                "car",
                s + rng.uniform(0, 3.5),
                0.0,
                -(rhw + 1.0),
                1.45,
                1.8,
                int(rng.integers(0, 8)),
            )
        )
    return tuple(out)
