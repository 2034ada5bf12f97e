"""Frames: one rendered image with its ground truth, addressed by a frame id."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.camera import make_camera
from simulator.render import SwitchLayout, render_view
from simulator.route import light_fade, stretch_at
from simulator.textures import ROAD_HALF_WIDTH
from simulator.world import DOMAINS, light, make_world, route_light

SPECS = (*DOMAINS, "drive", "route")
SPEED = 0.4  # metres per frame
START = 40.0  # route position of frame 0
TRANSITION = 20  # frames over which light and lane change before ``switch_at``
MIN_SIZE, MAX_SIZE = 16, 4096


@dataclass(frozen=True)
class Frame:
    """One camera frame: RGB image, trainId label (255 ignore) and the domain it belongs to."""

    frame_id: str
    image: np.ndarray
    label: np.ndarray
    domain: str


def frame_id(spec: str, seed: int, width: int, height: int, switch_at: int, index: int) -> str:
    """The id of a frame; ``switch_at`` is part of it only for the ``drive`` spec."""
    k = f"-k{switch_at}" if spec == "drive" else ""
    return f"{spec}-s{seed}-w{width}x{height}{k}-i{index}"


def check_args(spec: str, seed: int, width: int, height: int, switch_at: int) -> None:
    """Raise ValueError on arguments no frame can be rendered from."""
    if spec not in SPECS:
        raise ValueError(f"spec {spec!r} not in {SPECS}")
    if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
        raise ValueError(f"frame size {width}x{height} outside {MIN_SIZE}..{MAX_SIZE}")
    if seed < 0 or switch_at < 0:
        raise ValueError("seed and switch_at must be >= 0")


def render_indexed(
    spec: str, seed: int, width: int, height: int, switch_at: int, index: int
) -> Frame:
    """Frame ``index`` of the drive (spec, seed): the world at route position START + index*SPEED.

    For ``drive`` the ground and objects turn rural from the route position of ``switch_at``
    onwards (so the countryside is seen approaching), while light and lane change over the
    TRANSITION frames before it. ``route`` is a rural route of stretches of different looks
    (``simulator.route``).
    """
    check_args(spec, seed, width, height, switch_at)
    if index < 0:
        raise ValueError(f"frame index {index} < 0")
    world = make_world(seed)
    s = START + index * SPEED
    if spec == "route":
        return _render_route(seed, width, height, index, s)
    if spec == "urban":
        s_switch, alpha = math.inf, 0.0
    elif spec == "rural":
        s_switch, alpha = -math.inf, 1.0
    else:
        s_switch = START + switch_at * SPEED
        alpha = min(1.0, max(0.0, (index - (switch_at - TRANSITION)) / TRANSITION))
    lane_u, lane_r = ROAD_HALF_WIDTH["urban"] * 0.4, 0.9
    off = lane_u * (1 - alpha) + lane_r * alpha
    pitch = world.pitch + 0.006 * math.sin(0.35 * index + seed)
    key = light(world.urban_variant, world.rural_variant, round(alpha * 4))
    cam = make_camera(world, s, off, pitch, width, height, key)
    layout = SwitchLayout(s_switch, world.urban_variant, world.rural_variant)
    image, label = render_view(cam, layout)
    domain = spec if spec != "drive" else ("urban" if index < switch_at else "rural")
    return Frame(frame_id(spec, seed, width, height, switch_at, index), image, label, domain)


@dataclass(frozen=True)
class RouteLayout:
    """Route ``seed``'s stretches (``simulator.route``) as the renderer asks for them."""

    seed: int

    def look(self, s: float) -> str:
        return stretch_at(self.seed, 0.0, s).look

    def ground(self, s: float) -> tuple[str, int]:
        return stretch_at(self.seed, 0.0, s).ground


def route_stretch(seed: int, index: int) -> str:
    """The look of the stretch frame ``index`` of route ``seed`` is in."""
    return stretch_at(seed, 0.0, START + index * SPEED).look


def _render_route(seed: int, width: int, height: int, index: int, s: float) -> Frame:
    world = make_world(seed)
    stretch = stretch_at(seed, 0.0, s)
    key = route_light(stretch.previous_light, stretch.light, light_fade(stretch, s))
    pitch = world.pitch + 0.006 * math.sin(0.35 * index + seed)
    cam = make_camera(world, s, 0.9, pitch, width, height, key)
    image, label = render_view(cam, RouteLayout(seed))
    return Frame(frame_id("route", seed, width, height, 0, index), image, label, "rural")


def render_frame(domain: str, seed: int, width: int = 640, height: int = 480) -> Frame:
    """One independent scene of ``domain`` ('urban' or 'rural'); each seed is another world."""
    if domain not in DOMAINS:
        raise ValueError(f"domain {domain!r} not in {DOMAINS}")
    return render_indexed(domain, seed, width, height, 0, 0)
