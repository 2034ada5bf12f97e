"""The pinhole camera on the road and the screen footprint of vertical quads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.shading import LightKey
from simulator.world import World

Z_NEAR = 0.9


@dataclass(frozen=True)
class Camera:
    """Pinhole camera on the road: route position ``s`` and lateral ``off`` from the centre."""

    world: World
    width: int
    height: int
    f: float
    cx: float
    yh: float
    s: float
    off: float
    slope: float
    centre: float
    key: LightKey

    def lateral(self, z: np.ndarray) -> np.ndarray:
        """Camera-space lateral of the road centre at depths ``z`` (camera faces the tangent)."""
        w = self.world
        z = np.asarray(z, dtype=np.float64)  # far along the route float32 would wobble
        return w.centre(self.s + z) - self.centre - self.slope * z - self.off


def make_camera(
    world: World, s: float, off: float, pitch: float, width: int, height: int, key: LightKey
) -> Camera:
    f = 0.8 * width
    return Camera(
        world,
        width,
        height,
        f,
        width / 2.0,
        height * 0.42 - f * pitch,
        s,
        off,
        world.slope(s),
        float(world.centre(np.array([s]))[0]),
        key,
    )


@dataclass
class Quad:
    """Screen footprint of a vertical quad parallel to the road."""

    ra: int
    rb: int
    ca: int
    cb: int
    z: np.ndarray  # depth per column
    hgt: np.ndarray  # height above ground per pixel (rows x cols)


def quad(cam: Camera, z0: float, z1: float, lat0: float, lat1: float, h_hi: float) -> Quad | None:
    """Footprint of the vertical plane from (z0, lat0) to (z1, lat1) in camera space, up to
    ``h_hi``; screen x is linear in 1/z along it, so the per-column depth is exact."""
    z0 = max(z0, Z_NEAR)
    if z1 <= z0:
        return None
    c0 = cam.cx + cam.f * lat0 / z0
    c1 = cam.cx + cam.f * lat1 / z1
    if abs(c1 - c0) < 0.5:
        return None
    ca = max(0, math.floor(min(c0, c1)))
    cb = min(cam.width, math.ceil(max(c0, c1)))
    if ca >= cb:
        return None
    cols = np.arange(ca, cb, dtype=np.float32) + 0.5
    t = (cols - c0) / (c1 - c0)
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    inv = 1.0 / z0 + (1.0 / z1 - 1.0 / z0) * t
    hc = cam.world.cam_height
    top = cam.yh + cam.f * (hc - h_hi) * inv
    bot = cam.yh + cam.f * hc * inv
    ra = max(0, math.floor(float(top.min())))
    rb = min(cam.height, math.ceil(float(bot.max())))
    if ra >= rb:
        return None
    z = (1.0 / inv).astype(np.float32)
    ys = np.arange(ra, rb, dtype=np.float32) + (0.5 - cam.yh)
    hgt = hc - ys[:, None] * (z / cam.f)[None, :]
    return Quad(ra, rb, ca, cb, z, hgt)
