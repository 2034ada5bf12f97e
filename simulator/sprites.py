"""Objects drawn as camera-facing shapes (cars, poles, people, trees) at one depth each."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from common import classes as P
from simulator import shading as S
from simulator import textures as T
from simulator.camera import Z_NEAR, Camera, quad
from simulator.world import Obj

CAR_LENGTH = 4.4

_CAR_COLOURS = (
    (180, 30, 30),
    (30, 50, 120),
    (200, 200, 205),
    (25, 25, 28),
    (90, 95, 100),
    (220, 220, 215),
    (40, 90, 60),
    (160, 120, 40),
)
_CLOTHES = (
    (40, 40, 60),
    (150, 30, 35),
    (30, 70, 140),
    (200, 190, 170),
    (60, 90, 50),
    (25, 25, 25),
    (210, 140, 40),
    (120, 120, 130),
)
_SKIN = ((225, 180, 150), (170, 120, 90), (110, 75, 55))
WOOD = (120, 88, 60)
_TRUNK = (70, 52, 38)
_GREY_POLE = (120, 122, 126)
_DARK = (22, 22, 24)
_GLASS = (40, 50, 62)
_SIGN_COLOURS = ((236, 236, 230), (30, 80, 170), (230, 190, 30), (200, 40, 40))


def _rect(
    canvas: np.ndarray,
    cam: Camera,
    z: float,
    xl: float,
    xr: float,
    hlo: float,
    hhi: float,
    cols: np.ndarray,
) -> None:
    """Fill a camera-facing rectangle at depth ``z`` (lateral xl..xr, height hlo..hhi)."""
    sc = cam.f / z
    c0, c1 = cam.cx + xl * sc, cam.cx + xr * sc
    if c1 - c0 < 1.0:
        mid = 0.5 * (c0 + c1)
        c0, c1 = mid - 0.5, mid + 0.5
    hc = cam.world.cam_height
    ca, cb = max(0, round(c0)), min(cam.width, round(c1))
    ra = max(0, round(cam.yh + (hc - hhi) * sc))
    rb = min(cam.height, round(cam.yh + (hc - hlo) * sc))
    if ca >= cb or ra >= rb:
        return
    noise = T.screen_noise(cam.width, cam.height)
    canvas[ra:rb, ca:cb] = cols[noise[ra:rb, ca:cb]]


def _blob(
    canvas: np.ndarray,
    cam: Camera,
    z: float,
    x: float,
    h_mid: float,
    rx: float,
    ry: float,
    tex: np.ndarray,
    cone: bool = False,
) -> None:
    """An ellipse (or a layered cone) at depth ``z``, textured and with a ragged outline."""
    sc = cam.f / z
    hc = cam.world.cam_height
    xc, yc = cam.cx + x * sc, cam.yh + (hc - h_mid) * sc
    ca, cb = max(0, math.floor(xc - rx * sc)), min(cam.width, math.ceil(xc + rx * sc))
    ra, rb = max(0, math.floor(yc - ry * sc)), min(cam.height, math.ceil(yc + ry * sc))
    if ca >= cb or ra >= rb:
        return
    dy = (np.arange(ra, rb, dtype=np.float32) + 0.5 - yc) / (ry * sc)
    dx = (np.arange(ca, cb, dtype=np.float32) + 0.5 - xc) / (rx * sc)
    ti = ((dy * ry * 10).astype(np.int64) + 500) % 128
    tj = ((dx * rx * 10).astype(np.int64) + 500) % 128
    texel = tex[ti[:, None], tj[None, :]]
    jag = T.unpack_rgb(texel)[..., 1].astype(np.float32) * (0.5 / 255)
    if cone:
        t = (dy[:, None] + 1.0) * 0.5
        width = t * (0.7 + 0.3 * ((t * 4.0) % 1.0))
        mask = np.abs(dx)[None, :] < width + jag - 0.25
    else:
        mask = dy[:, None] ** 2 + dx[None, :] ** 2 < 0.8 + jag
    np.copyto(canvas[ra:rb, ca:cb], texel, where=mask)


def _draw_car(canvas: np.ndarray, cam: Camera, o: Obj, z: float, lat: float) -> None:
    lt = cam.key
    hq = S.haze_level(lt, max(z, 0.0))
    key = cam.key
    body = _CAR_COLOURS[o.style % len(_CAR_COLOURS)]
    hw = o.size / 2
    if abs(lat) > hw and z < 45:
        xs = lat - hw if lat > 0 else lat + hw
        face = 2 if lat > 0 else 1
        for a, b, lo, hi, colour in (
            (0.0, CAR_LENGTH, 0.3, 0.95, body),
            (0.9, 3.4, 0.95, 1.42, _GLASS),
            (0.55, 1.25, 0.0, 0.55, _DARK),
            (3.1, 3.8, 0.0, 0.55, _DARK),
        ):
            q = quad(cam, z + a, z + b, xs, xs, hi)
            if q is None:
                continue
            mask = (q.hgt >= lo) & (q.hgt < hi)
            cols = S.solid(colour, P.CAR, key, face, hq)
            noise = T.screen_noise(cam.width, cam.height)[q.ra : q.rb, q.ca : q.cb]
            np.copyto(canvas[q.ra : q.rb, q.ca : q.cb], cols[noise], where=mask)
    if z < Z_NEAR + 0.5:  # passing it: only its side is in view
        return
    _rect(canvas, cam, z, lat - hw, lat + hw, 0.3, 0.98, S.solid(body, P.CAR, key, 0, hq))
    _rect(
        canvas,
        cam,
        z,
        lat - hw + 0.15,
        lat + hw - 0.15,
        0.98,
        o.height,
        S.solid(_GLASS, P.CAR, key, 0, hq),
    )
    dark = S.solid(_DARK, P.CAR, key, 0, hq)
    _rect(canvas, cam, z, lat - hw + 0.1, lat - hw + 0.4, 0.0, 0.35, dark)
    _rect(canvas, cam, z, lat + hw - 0.4, lat + hw - 0.1, 0.0, 0.35, dark)
    lamp = S.solid((200, 30, 30) if o.x > 0 else (235, 235, 220), P.CAR, key, 3, hq)
    _rect(canvas, cam, z, lat - hw + 0.05, lat - hw + 0.35, 0.72, 0.88, lamp)
    _rect(canvas, cam, z, lat + hw - 0.35, lat + hw - 0.05, 0.72, 0.88, lamp)


def _draw_pole(canvas: np.ndarray, cam: Camera, o: Obj, z: float, lat: float) -> None:
    hq = S.haze_level(cam.key, z)
    cols = S.solid(WOOD if o.style == 1 else _GREY_POLE, P.POLE, cam.key, 3, hq)
    r = o.size / 2
    _rect(canvas, cam, z, lat - r, lat + r, 0.0, o.height, cols)
    inward = -1.0 if o.x > 0 else 1.0
    if o.style == 0:
        _rect(
            canvas,
            cam,
            z,
            min(lat, lat + inward * 1.6),
            max(lat, lat + inward * 1.6),
            o.height - 0.15,
            o.height,
            cols,
        )
    elif o.style == 1:
        _rect(canvas, cam, z, lat - 0.9, lat + 0.9, o.height - 0.8, o.height - 0.65, cols)
    else:  # a post with a traffic sign plate on top (simulator.looks.SIGN_POST)
        plate = S.solid(
            _SIGN_COLOURS[int(o.s0 * 7) % len(_SIGN_COLOURS)], P.TRAFFIC_SIGN, cam.key, 0, hq
        )
        _rect(canvas, cam, z, lat - 0.33, lat + 0.33, o.height - 0.7, o.height, plate)


def _draw_person(canvas: np.ndarray, cam: Camera, o: Obj, z: float, lat: float) -> None:
    hq = S.haze_level(cam.key, z)
    key, h = cam.key, o.height
    shirt = S.solid(_CLOTHES[o.style % 8], P.PERSON, key, 3, hq)
    legs = S.solid(_CLOTHES[(o.style // 8) % 8], P.PERSON, key, 3, hq)
    skin = S.solid(_SKIN[o.style % 3], P.PERSON, key, 3, hq)
    _rect(canvas, cam, z, lat - 0.17, lat - 0.03, 0.0, 0.48 * h, legs)
    _rect(canvas, cam, z, lat + 0.03, lat + 0.17, 0.0, 0.48 * h, legs)
    _rect(canvas, cam, z, lat - 0.22, lat + 0.22, 0.47 * h, 0.82 * h, shirt)
    _rect(canvas, cam, z, lat - 0.27, lat - 0.2, 0.5 * h, 0.8 * h, shirt)
    _rect(canvas, cam, z, lat + 0.2, lat + 0.27, 0.5 * h, 0.8 * h, shirt)
    _rect(canvas, cam, z, lat - 0.04, lat + 0.04, 0.82 * h, 0.86 * h, skin)
    _rect(canvas, cam, z, lat - 0.1, lat + 0.1, 0.86 * h, h, skin)


def _draw_tree(canvas: np.ndarray, cam: Camera, o: Obj, z: float, lat: float) -> None:
    lt = cam.key
    hq = S.haze_level(lt, z)
    trunk = S.solid(_TRUNK, P.VEGETATION, cam.key, 3, hq)
    tex = S.foliage(0 if o.style == 0 else 1, cam.key, hq).reshape(128, 128)
    r = o.size
    if o.kind == "conifer":
        _rect(canvas, cam, z, lat - 0.12, lat + 0.12, 0.0, 1.2, trunk)
        _blob(canvas, cam, z, lat, (o.height + 0.8) / 2, r, (o.height - 0.8) / 2, tex, True)
    else:
        crown_mid = o.height - r
        _rect(canvas, cam, z, lat - 0.13, lat + 0.13, 0.0, crown_mid, trunk)
        _blob(canvas, cam, z, lat, crown_mid, r, r * 0.9, tex)


DRAW: dict[str, Callable[[np.ndarray, Camera, Obj, float, float], None]] = {
    "car": _draw_car,
    "pole": _draw_pole,
    "person": _draw_person,
    "tree": _draw_tree,
    "conifer": _draw_tree,
}
