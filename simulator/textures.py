"""Procedural texture maps, built once per (domain, variant) and cached.

Everything is packed as uint32 RGBL (R, G, B, trainId in the top byte) so the renderer moves
colour and label with one gather and one write per pixel.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from common import classes as P

GROUND_PPM = 24  # ground map texels per metre
GROUND_LAT = 32.0  # the ground map covers lateral offsets -32..32 m from the road centre
GROUND_NU = int(2 * GROUND_LAT * GROUND_PPM)
GROUND_PERIOD = 16.0  # metres along the route before the ground map repeats
GROUND_NV = int(GROUND_PERIOD * GROUND_PPM)
FACADE_PPM = 8
FACADE_H = 256  # 32 m of height
FACADE_W = 128  # 16 m along the street
NOISE_LEVELS = 16


def pack(rgb: np.ndarray, label: int | np.ndarray) -> np.ndarray:
    """Pack float or int RGB (...x3) and a label into uint32 RGBL."""
    c = np.clip(np.asarray(rgb, dtype=np.float32), 0, 255).astype(np.uint32)
    lab = np.asarray(label, dtype=np.uint32)
    out: np.ndarray = c[..., 0] | (c[..., 1] << 8) | (c[..., 2] << 16) | (lab << 24)
    return out


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """View packed pixels as ...x4 uint8 (R, G, B, label)."""
    return packed.view(np.uint8).reshape(*packed.shape, 4)


def periodic_noise(h: int, w: int, cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth value noise in [-1, 1] that tiles in both axes (bilinear over a random grid)."""
    gh, gw = cells
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    y = (np.arange(h, dtype=np.float32) + 0.5) * gh / h - 0.5
    x = (np.arange(w, dtype=np.float32) + 0.5) * gw / w - 0.5
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    fy = (y - y0)[:, None]
    fx = (x - x0)[None, :]
    fy = fy * fy * (3 - 2 * fy)
    fx = fx * fx * (3 - 2 * fx)
    y0m, y1m = y0 % gh, (y0 + 1) % gh
    x0m, x1m = x0 % gw, (x0 + 1) % gw
    a = grid[y0m][:, x0m]
    b = grid[y0m][:, x1m]
    c = grid[y1m][:, x0m]
    d = grid[y1m][:, x1m]
    out: np.ndarray = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    return out


def fractal(
    h: int, w: int, rng: np.random.Generator, octaves: tuple[tuple[int, float], ...]
) -> np.ndarray:
    """Sum of periodic noise octaves; each octave is (cells across the width, weight)."""
    out = np.zeros((h, w), dtype=np.float32)
    for cells, weight in octaves:
        gh = max(1, round(cells * h / w))
        out += weight * periodic_noise(h, w, (gh, cells), rng)
    return out


@lru_cache(maxsize=16)
def screen_noise(width: int, height: int) -> np.ndarray:
    """HxW uint8 indices 0..15 used to pick a noisy shade of a solid colour (sensor grain)."""
    rng = np.random.default_rng(12345)
    n = rng.normal(0, 1, size=(height, width)).astype(np.float32)
    n += 0.6 * periodic_noise(height, width, (max(1, height // 6), max(1, width // 6)), rng) * 2
    q: np.ndarray = np.clip((n + 2.5) / 5.0 * NOISE_LEVELS, 0, NOISE_LEVELS - 1)
    return _freeze(q.astype(np.uint8))


def solid(
    rgb: np.ndarray | tuple[float, float, float], label: int, amp: float = 10.0
) -> np.ndarray:
    """NOISE_LEVELS packed shades of one colour, indexed by ``screen_noise``."""
    steps = np.linspace(-amp, amp, NOISE_LEVELS, dtype=np.float32)[:, None]
    return pack(np.asarray(rgb, dtype=np.float32)[None, :] + steps, label)


def _lat_axis() -> np.ndarray:
    return (np.arange(GROUND_NU, dtype=np.float32) + 0.5) / GROUND_PPM - GROUND_LAT


def _v_axis() -> np.ndarray:
    return (np.arange(GROUND_NV, dtype=np.float32) + 0.5) / GROUND_PPM


@lru_cache(maxsize=32)
def ground_map(domain: str, variant: int) -> np.ndarray:
    """World-space ground (route metres x lateral metres) for one domain style, packed RGBL.

    Urban: asphalt, dashed centre line, edge lines, kerb, paved sidewalk. Rural: dirt or gravel
    with darker tyre tracks and a grassy crown, ragged edges, then grass terrain.
    """
    rng = np.random.default_rng((variant, 7 if domain == "urban" else 11))
    shape = (GROUND_NV, GROUND_NU)
    u = np.broadcast_to(_lat_axis()[None, :], shape)
    v = np.broadcast_to(_v_axis()[:, None], shape)
    au = np.abs(u)
    fine = rng.normal(0, 1, size=shape).astype(np.float32)
    mid = fractal(GROUND_NV, GROUND_NU, rng, ((64, 1.0), (256, 0.5)))
    big = fractal(GROUND_NV, GROUND_NU, rng, ((8, 1.0), (24, 0.5)))
    rgb = np.empty((*shape, 3), dtype=np.float32)
    label = np.empty(shape, dtype=np.uint8)
    if domain == "urban":
        rhw = ROAD_HALF_WIDTH["urban"]
        grey = 78 + 10 * (variant % 3)
        asphalt = grey + 4 * fine + 6 * mid + 9 * big
        rgb[...] = asphalt[..., None] * np.array([1.0, 1.0, 1.04], dtype=np.float32)
        label[...] = P.ROAD
        dash = (v % 8.0) < 3.0
        paint = ((au < 0.08) & dash) | (np.abs(au - (rhw - 0.35)) < 0.07)
        paint_rgb = np.array([215, 215, 205], dtype=np.float32) + 12 * fine[..., None]
        rgb = np.where(paint[..., None], paint_rgb, rgb)
        kerb = (au >= rhw) & (au < rhw + 0.25)
        walk = au >= rhw + 0.25
        slabs = ((np.abs(u) % 0.75) < 0.05) | ((v % 0.75) < 0.05)
        tones = [(168, 160, 152), (150, 146, 140), (176, 166, 150), (160, 150, 150)]
        tone = np.array(tones[variant % len(tones)], dtype=np.float32)
        walk_rgb = tone + (8 * fine + 10 * mid + 8 * big)[..., None]
        walk_rgb = np.where(slabs[..., None], walk_rgb * 0.8, walk_rgb)
        kerb_rgb = np.array([190, 188, 182], dtype=np.float32) + 6 * fine[..., None]
        rgb = np.where(walk[..., None], walk_rgb, rgb)
        rgb = np.where(kerb[..., None], kerb_rgb, rgb)
        label[kerb | walk] = P.SIDEWALK
    else:
        rhw = ROAD_HALF_WIDTH["rural"]
        edge = rhw + 0.4 * big
        gravel = variant % 2 == 1
        base = np.array([150, 140, 120] if gravel else [138, 108, 72], dtype=np.float32)
        speck = rng.random(shape).astype(np.float32)
        dirt = base + (14 * fine + 14 * mid + 12 * big)[..., None]
        if gravel:
            dirt += (np.where(speck > 0.85, 35, 0) - np.where(speck < 0.1, 30, 0))[..., None]
        track = np.abs(au - 0.95) < 0.28 + 0.05 * mid
        dirt = np.where(track[..., None], dirt * 0.78, dirt)
        crown = (au < 0.45) & (mid + 0.5 * fine > 0.2)
        tuft = np.array([105, 120, 60], dtype=np.float32) + 12 * fine[..., None]
        dirt = np.where(crown[..., None], tuft, dirt)
        grass_a = np.array([84, 118, 42] if variant % 3 else [120, 128, 58], dtype=np.float32)
        grass_b = np.array([150, 140, 78], dtype=np.float32)
        mixw = np.clip(0.5 + 0.8 * big, 0, 1)[..., None]
        grass = grass_a * (1 - mixw) + grass_b * mixw
        grass = grass * (1 + 0.22 * fine + 0.2 * mid)[..., None]
        road = au < edge
        rgb = np.where(road[..., None], dirt, grass)
        label[...] = np.where(road, P.ROAD, P.TERRAIN)
    return _freeze(pack(rgb, label))


@lru_cache(maxsize=64)
def facade_map(style: int) -> np.ndarray:
    """Building wall with rows of windows and a darker ground floor; row 0 is street level."""
    rng = np.random.default_rng((style, 3))
    walls = [(190, 180, 165), (150, 85, 70), (200, 190, 150), (120, 120, 125), (170, 150, 130)]
    wall = np.array(walls[style % len(walls)], dtype=np.float32)
    h = (np.arange(FACADE_H, dtype=np.float32) + 0.5)[:, None] / FACADE_PPM
    s = (np.arange(FACADE_W, dtype=np.float32) + 0.5)[None, :] / FACADE_PPM
    fine = rng.normal(0, 1, size=(FACADE_H, FACADE_W)).astype(np.float32)
    mid = fractal(FACADE_H, FACADE_W, rng, ((16, 1.0), (64, 0.5)))
    rgb = wall + (7 * fine + 10 * mid)[..., None]
    floor_h = 3.0 + 0.3 * (style % 3)
    pitch = 16.0 / (5 + style % 3)  # whole windows per texture period: no seam
    win_w = pitch * (0.4 + 0.05 * (style % 4))
    fh = h % floor_h
    win = (h > 3.8) & (fh > 0.9) & (fh < 2.3) & ((s % pitch) < win_w)
    sky = np.clip((fh - 0.9) / 1.4, 0, 1)
    glass = np.array([55, 70, 90], dtype=np.float32) + (40 * sky + 10 * mid)[..., None]
    rgb = np.where(win[..., None], glass, rgb)
    shop = (h < 3.3) & (h > 0.4) & ((s % 4.0) < 2.8)
    rgb = np.where(
        shop[..., None], np.array([40, 45, 52], dtype=np.float32) + 8 * mid[..., None], rgb
    )
    rgb = np.where(((h > 3.3) & (h < 3.6))[..., None], rgb * 0.7, rgb)
    return _freeze(pack(rgb, P.BUILDING))


@lru_cache(maxsize=8)
def foliage_map(kind: int) -> np.ndarray:
    """Leaf texture (128x128) for crowns and tree lines: 0 urban trees, 1 rural, 2 far forest."""
    rng = np.random.default_rng((kind, 5))
    n = fractal(128, 128, rng, ((8, 1.0), (32, 0.6), (128, 0.4)))
    dark = np.array([[38, 62, 25], [30, 55, 22], [45, 62, 38]][kind], dtype=np.float32)
    light = np.array([[95, 140, 55], [110, 135, 50], [90, 110, 70]][kind], dtype=np.float32)
    t = np.clip(0.5 + 0.7 * n, 0, 1)[..., None]
    return _freeze(pack(dark * (1 - t) + light * t, P.VEGETATION))


@lru_cache(maxsize=8)
def edge_noise(n: int = 1024) -> np.ndarray:
    """1-D periodic noise in [-1, 1] for ragged outlines (tree tops, crowns)."""
    rng = np.random.default_rng(99)
    a = periodic_noise(1, n, (1, 64), rng)[0] + 0.5 * periodic_noise(1, n, (1, 256), rng)[0]
    return _freeze((a / 1.5).astype(np.float32))


ROAD_HALF_WIDTH = {"urban": 4.6, "rural": 2.4}
SIDEWALK_WIDTH = 4.0


def _freeze(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a
