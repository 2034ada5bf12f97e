"""Light applied to packed textures and colours, cached on small keys (quantised haze)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from simulator import textures as T
from simulator.world import Light

HAZE_LEVELS = 8
# face: 0 faces the camera, 1 a wall on the left of the road, 2 on the right, 3 unshaded
LightKey = Light  # frozen, hashable: caches key on the light itself


def haze_amount(lt: Light, z: float | np.ndarray) -> np.ndarray:
    """Fraction of haze colour seen through ``z`` metres of air."""
    out: np.ndarray = lt.haze_max * (1.0 - np.exp(-np.asarray(z, dtype=np.float32) / lt.haze_dist))
    return out


def haze_level(lt: Light, z: float) -> int:
    return min(HAZE_LEVELS - 1, int(fade(z, lt) * HAZE_LEVELS + 0.5))


def _tone(key: LightKey, face: int, hq: int) -> tuple[np.ndarray, np.ndarray]:
    lt = key
    lit, dark = 1.08, 0.72
    shade = (0.9, lit if lt.sun_left else dark, dark if lt.sun_left else lit, 1.0)[face]
    h = hq / HAZE_LEVELS
    mul = np.asarray(lt.mul, dtype=np.float32) * (shade * (1 - h))
    add = np.asarray(lt.haze, dtype=np.float32) * h
    return mul, add


def toned(packed: np.ndarray, mul: np.ndarray, add: np.ndarray) -> np.ndarray:
    """Apply ``rgb * mul + add`` to packed pixels, keeping their labels."""
    px = T.unpack_rgb(packed)
    rgb = px[..., :3].astype(np.float32) * mul + add
    out = T.pack(rgb, px[..., 3])
    out.setflags(write=False)
    return out


@lru_cache(maxsize=512)
def facade(style: int, key: LightKey, face: int, hq: int) -> np.ndarray:
    return toned(T.facade_map(style), *_tone(key, face, hq))


@lru_cache(maxsize=128)
def foliage(kind: int, key: LightKey, hq: int) -> np.ndarray:
    return toned(T.foliage_map(kind), *_tone(key, 3, hq))


@lru_cache(maxsize=4096)
def solid(rgb: tuple[int, int, int], label: int, key: LightKey, face: int, hq: int) -> np.ndarray:
    """Noisy shades of one colour under this light (see ``textures.solid``)."""
    mul, add = _tone(key, face, hq)
    out = T.solid(np.asarray(rgb, dtype=np.float32) * mul + add, label, amp=9.0)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=32)
def ground(domain: str, variant: int, key: LightKey) -> np.ndarray:
    """One domain's ground map under this light, flattened."""
    mul, add = _tone(key, 3, 0)
    return toned(T.ground_map(domain, variant), mul, add).reshape(-1)


@lru_cache(maxsize=8)
def ground_stack(keys: tuple[tuple[str, int], ...], key: LightKey) -> np.ndarray:
    """Several (domain, variant) ground maps stacked in order, for frames that see them all."""
    both = np.concatenate([ground(domain, variant, key) for domain, variant in keys])
    both.setflags(write=False)
    return both


@lru_cache(maxsize=16)
def sky(key: LightKey, width: int, height: int) -> np.ndarray:
    """Sky of ``height`` rows whose last row touches the horizon, with soft clouds."""
    lt = key
    rng = np.random.default_rng(int(sum(lt.zenith)))
    d = (height - np.arange(height, dtype=np.float32) - 0.5) / height
    g = (np.clip(d * 1.6, 0, 1) ** 0.7)[:, None, None]
    base = np.asarray(lt.horizon, np.float32) * (1 - g) + np.asarray(lt.zenith, np.float32) * g
    clouds = T.fractal(height, width, rng, ((4, 1.0), (12, 0.5), (40, 0.25)))
    c = np.clip(clouds * 1.3 - 0.15, 0, 1)[..., None] * np.clip(d * 3, 0, 1)[:, None, None]
    cloud_rgb = np.asarray(lt.horizon, np.float32) * 1.05 + 12
    rgb = base * (1 - 0.7 * c) + cloud_rgb * (0.7 * c)
    out = T.pack(rgb, 10)
    out.setflags(write=False)
    return out


def haze_rgb(key: LightKey) -> np.ndarray:
    return np.asarray(key.haze, dtype=np.float32)


def fade(z: float, lt: Light) -> float:
    """Haze for scalar depth, used to decide whether a far object is worth drawing."""
    return lt.haze_max * (1.0 - math.exp(-z / lt.haze_dist))
