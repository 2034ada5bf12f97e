"""The renderer: a pinhole camera over a flat ground, walls as perspective quads, and
billboards, painted far to near into one packed RGBL canvas (colour and label together).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from common import classes as P
from simulator import shading as S
from simulator import textures as T
from simulator.camera import Z_NEAR, Camera, quad
from simulator.looks import cell_objects
from simulator.sprites import CAR_LENGTH, DRAW, WOOD
from simulator.world import CELL, Obj

Z_FAR_WALL = 140.0
CONCRETE = (168, 164, 156)
COPING = (120, 118, 114)
Z_FAR_OBJ = 90.0
Z_MAX_GROUND = 600.0


class Layout(Protocol):
    """What lies where along the route: the look of route metre s and the ground map there."""

    def look(self, s: float) -> str: ...

    def ground(self, s: float) -> tuple[str, int]: ...


@dataclass(frozen=True)
class SwitchLayout:
    """The plain drives: urban before route metre ``s_switch``, rural from it on."""

    s_switch: float
    urban_variant: int
    rural_variant: int

    def look(self, s: float) -> str:
        return "urban" if s < self.s_switch else "rural"

    def ground(self, s: float) -> tuple[str, int]:
        look = self.look(s)
        return look, self.urban_variant if look == "urban" else self.rural_variant


def render_view(cam: Camera, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame: sky, ground, walls, then objects far to near. Returns (image, label)."""
    h, w = cam.height, cam.width
    canvas = np.empty((h, w), dtype=np.uint32)
    y0 = min(h, max(0, math.floor(cam.yh) + 1))
    if y0 > 0:
        canvas[:y0] = S.sky(cam.key, w, h)[h - y0 :]
    if y0 < h:
        _ground(canvas, cam, y0, layout)
    _objects(canvas, cam, layout)
    # Pillow splits the channels several times faster than a strided numpy copy
    im = Image.frombuffer("RGBA", (w, h), canvas, "raw", "RGBA", 0, 1)
    return np.array(im.convert("RGB")), np.array(im.getchannel("A"))


def _ground(canvas: np.ndarray, cam: Camera, y0: int, layout: Layout) -> None:
    ys = np.arange(y0, cam.height, dtype=np.float32) + 0.5
    hc = cam.world.cam_height
    z = np.minimum(hc * cam.f / np.maximum(ys - cam.yh, 1e-3), Z_MAX_GROUND)
    v = cam.s + z.astype(np.float64)  # float32 would blur textures far along the route
    vi = (v * T.GROUND_PPM).astype(np.int64) % T.GROUND_NV
    # rows far to near cross at most a few ground changes: stack the maps the view needs
    grounds = [layout.ground(float(x)) for x in v]
    keys = tuple(dict.fromkeys(grounds))
    if len(keys) == 1:
        gmap = S.ground(*keys[0], cam.key)
    else:
        gmap = S.ground_stack(keys, cam.key)
        slot = {k: i for i, k in enumerate(keys)}
        vi += np.array([slot[g] for g in grounds], dtype=np.int64) * T.GROUND_NV
    rowbase = vi * T.GROUND_NU
    xc = cam.cx + cam.f * cam.lateral(z) / z
    k = (z / cam.f * T.GROUND_PPM).astype(np.float32)
    b = (T.GROUND_LAT * T.GROUND_PPM - xc * k).astype(np.float32)
    xs = np.arange(cam.width, dtype=np.float32) + 0.5
    u = xs[None, :] * k[:, None]
    u += b[:, None]
    np.clip(u, 0, T.GROUND_NU - 1, out=u)
    idx = u.astype(np.int64)
    idx += rowbase[:, None]
    canvas[y0:] = gmap.take(idx)
    lt = cam.key
    haze = S.haze_amount(lt, z)
    hazy = np.nonzero(haze > 0.06)[0]  # thinner haze near the camera is not worth a pass
    if hazy.size:
        r0, r1 = int(hazy[0]), int(hazy[-1]) + 1
        _haze_rows(canvas[y0 + r0 : y0 + r1], haze[r0:r1], lt.haze)


def _haze_rows(rows: np.ndarray, amount: np.ndarray, haze: tuple[float, float, float]) -> None:
    """Blend packed rows toward the haze colour in place, two channels per 32-bit op (SWAR)."""
    a = (amount * 256).astype(np.uint32)[:, None]
    b = np.uint32(256) - a
    hr, hg, hb = (int(c) for c in haze)
    rb = rows & np.uint32(0x00FF00FF)
    rb *= b
    rb += a * np.uint32(hr | (hb << 16))
    rb >>= np.uint32(8)
    rb &= np.uint32(0x00FF00FF)
    g = (rows >> np.uint32(8)) & np.uint32(0xFF)
    g *= b
    g += a * np.uint32(hg)
    g &= np.uint32(0xFF00)
    rows &= np.uint32(0xFF000000)
    rows |= rb
    rows |= g


def _objects(canvas: np.ndarray, cam: Camera, layout: Layout) -> None:
    seed = cam.world.seed
    k0 = math.floor(cam.s / CELL) - 3
    k1 = math.floor((cam.s + Z_FAR_WALL) / CELL)
    objs: list[Obj] = []
    for k in range(k0, k1 + 1):
        objs.extend(cell_objects(seed, layout.look(k * CELL), k))
    if not objs:
        return
    s0 = np.array([o.s0 for o in objs]) - cam.s
    s1 = np.array([o.s0 + CAR_LENGTH if o.kind == "car" else max(o.s0, o.s1) for o in objs])
    s1 -= cam.s
    xs = np.array([o.x for o in objs])
    z0 = np.maximum(s0, Z_NEAR)
    z1 = np.maximum(s1, z0)
    lat = cam.lateral(np.concatenate([z0, z1])).reshape(2, -1) + xs[None, :]
    # slack so that fronts, car widths and crowns are not culled with their anchor line
    slack = np.array([o.size + 1.0 for o in objs])
    half = cam.cx / cam.f
    vis = (s1 > Z_NEAR) & (
        (lat[0] - slack < z0 * half) & (lat[0] + slack > -z0 * half)
        | (lat[1] - slack < z1 * half) & (lat[1] + slack > -z1 * half)
    )
    walls: list[tuple[float, int]] = []
    rest: list[tuple[float, int]] = []
    for i in np.nonzero(vis)[0].tolist():
        o = objs[i]
        if o.kind in ("facade", "vegwall"):
            walls.append((-1e9 if o.style == 2 else -s0[i], i))
        elif s0[i] < Z_FAR_OBJ:
            rest.append((-s0[i], i))
    walls.sort()
    rest.sort()
    # a building's end wall is hidden when the next-nearer one on its side adjoins and is as tall
    ends = {(o.x > 0, round(o.s1, 3)): o.height for o in objs if o.kind == "facade"}
    for _, i in walls:
        o = objs[i]
        hidden = ends.get((o.x > 0, round(o.s0, 3)), -1.0) >= o.height
        _draw_wall(canvas, cam, o, float(s0[i]), float(s1[i]), lat[0, i], lat[1, i], hidden)
    for _, i in rest:
        o = objs[i]
        if o.kind == "fence":
            _draw_fence(canvas, cam, o, float(s0[i]), float(s1[i]), lat[0, i], lat[1, i])
        elif o.kind == "parapet":
            _draw_parapet(canvas, cam, o, float(s0[i]), float(s1[i]), lat[0, i], lat[1, i])
        elif s0[i] >= Z_NEAR + 0.5 or (o.kind == "car" and s0[i] > -4.0):
            DRAW[o.kind](canvas, cam, o, float(s0[i]), float(lat[0, i]))


def _draw_wall(
    canvas: np.ndarray,
    cam: Camera,
    o: Obj,
    z0: float,
    z1: float,
    lat0: float,
    lat1: float,
    end_hidden: bool = False,
) -> None:
    if z1 <= Z_NEAR or z0 > Z_FAR_WALL:
        return
    q = quad(cam, z0, z1, lat0, lat1, o.height)
    lt = cam.key
    hq = S.haze_level(lt, max(z0, Z_NEAR) * 0.5 + z1 * 0.5)
    if o.kind == "facade":
        face = 1 if o.x < 0 else 2
        if q is not None:
            tex = S.facade(o.style, cam.key, face, hq)
            ti = (q.hgt * T.FACADE_PPM).astype(np.int64)
            np.maximum(ti, 0, out=ti)
            np.minimum(ti, T.FACADE_H - 1, out=ti)
            ti *= T.FACADE_W
            ti += ((cam.s + q.z.astype(np.float64)) * T.FACADE_PPM).astype(np.int64) % T.FACADE_W
            mask = (q.hgt >= 0) & (q.hgt < o.height)
            np.copyto(canvas[q.ra : q.rb, q.ca : q.cb], tex.take(ti), where=mask)
        if z0 > Z_NEAR and not end_hidden:
            sgn = 1.0 if o.x > 0 else -1.0
            tex0 = S.facade(o.style, cam.key, 0, S.haze_level(lt, z0))
            _front(canvas, cam, z0, lat0, lat0 + sgn * o.size, o.height, tex0)
        return
    if q is None:
        return
    tex = S.foliage(o.style, cam.key, hq)
    sa = cam.s + q.z.astype(np.float64)
    edge = T.edge_noise()
    top = o.height * (0.8 + 0.2 * edge[(sa * 6).astype(np.int64) % edge.size])
    mask = (q.hgt >= 0) & (q.hgt < top[None, :])
    ti = (q.hgt * 10).astype(np.int64)
    ti &= 127
    ti <<= 7
    ti += (sa * 10).astype(np.int64) & 127
    np.copyto(canvas[q.ra : q.rb, q.ca : q.cb], tex.take(ti), where=mask)


def _front(
    canvas: np.ndarray,
    cam: Camera,
    z: float,
    xa: float,
    xb: float,
    h_hi: float,
    tex: np.ndarray,
) -> None:
    """A building's end wall, facing the camera at depth ``z``, camera lateral xa..xb."""
    sc = cam.f / z
    c0, c1 = sorted((cam.cx + xa * sc, cam.cx + xb * sc))
    hc = cam.world.cam_height
    ca, cb = max(0, math.floor(c0)), min(cam.width, math.ceil(c1))
    ra = max(0, math.floor(cam.yh + (hc - h_hi) * sc))
    rb = min(cam.height, math.ceil(cam.yh + hc * sc))
    if ca >= cb or ra >= rb:
        return
    hgt = hc - (np.arange(ra, rb, dtype=np.float32) + 0.5 - cam.yh) / sc
    along = np.abs((np.arange(ca, cb, dtype=np.float32) + 0.5 - cam.cx) / sc - xa)
    ti = np.minimum((hgt * T.FACADE_PPM).astype(np.int64), T.FACADE_H - 1) * T.FACADE_W
    tj = (along * T.FACADE_PPM).astype(np.int64) % T.FACADE_W
    tex.take(ti[:, None] + tj[None, :], out=canvas[ra:rb, ca:cb])


def _draw_fence(
    canvas: np.ndarray, cam: Camera, o: Obj, z0: float, z1: float, lat0: float, lat1: float
) -> None:
    q = quad(cam, z0, z1, lat0, lat1, o.height)
    if q is None:
        return
    lt = cam.key
    cols = S.solid(WOOD, P.FENCE, cam.key, 3, S.haze_level(lt, max(z0, 1.0)))
    sa = cam.s + q.z.astype(np.float64)
    post = (sa % 2.2) < np.maximum(0.14, 1.2 * q.z / cam.f)
    hg = q.hgt
    rails = ((hg > 0.45) & (hg < 0.6)) | ((hg > 0.95) & (hg < 1.1))
    mask = (hg >= 0) & (hg < o.height) & (rails | post[None, :])
    noise = T.screen_noise(cam.width, cam.height)[q.ra : q.rb, q.ca : q.cb]
    np.copyto(canvas[q.ra : q.rb, q.ca : q.cb], cols[noise], where=mask)


def _draw_parapet(
    canvas: np.ndarray, cam: Camera, o: Obj, z0: float, z1: float, lat0: float, lat1: float
) -> None:
    """A bridge's low concrete wall (trainId wall), with a darker coping on top."""
    q = quad(cam, z0, z1, lat0, lat1, o.height)
    if q is None:
        return
    hq = S.haze_level(cam.key, max(z0, 1.0))
    body = S.solid(CONCRETE, P.WALL, cam.key, 3, hq)
    coping = S.solid(COPING, P.WALL, cam.key, 3, hq)
    hg = q.hgt
    noise = T.screen_noise(cam.width, cam.height)[q.ra : q.rb, q.ca : q.cb]
    region = canvas[q.ra : q.rb, q.ca : q.cb]
    np.copyto(region, body[noise], where=(hg >= 0) & (hg < o.height - 0.12))
    np.copyto(region, coping[noise], where=(hg >= o.height - 0.12) & (hg < o.height))
