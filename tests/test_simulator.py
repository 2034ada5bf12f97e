"""Simulator: determinism, ground truth, drive coherence, frame ids, oracle, palette, speed."""

from __future__ import annotations

import numpy as np
import pytest

from common.classes import CLASS_NAMES, IGNORE, PALETTE, RARE_CLASSES, colorize
from common.errors import ConfigError, ProtocolError
from simulator.bench import bench_sim
from simulator.drive import Drive, frame_from_id
from simulator.gallery import gallery_array
from simulator.oracle import OracleAnnotator
from simulator.scene import Frame, render_frame

W, H = 160, 120
ROAD, SIDEWALK, BUILDING, FENCE, POLE, VEG, TERRAIN, SKY, PERSON, CAR = (
    0,
    1,
    2,
    4,
    5,
    8,
    9,
    10,
    11,
    13,
)
VALID = set(range(19)) | {IGNORE}


def _present(frames: list[Frame]) -> set[int]:
    return set().union(*(np.unique(f.label).tolist() for f in frames))


def test_palette_and_colorize_known_values() -> None:
    assert len(CLASS_NAMES) == 19 and PALETTE.shape == (19, 3) and PALETTE.dtype == np.uint8
    assert CLASS_NAMES[0] == "road" and CLASS_NAMES[13] == "car"
    assert RARE_CLASSES == (3, 4, 5, 6, 7, 9, 12, 14, 15, 16, 17)
    mask = np.array([[0, 10], [13, IGNORE]], dtype=np.uint8)
    rgb = colorize(mask)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [128, 64, 128]
    assert rgb[0, 1].tolist() == [70, 130, 180]
    assert rgb[1, 0].tolist() == [0, 0, 142]
    assert rgb[1, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("domain", ["urban", "rural"])
def test_render_is_deterministic_per_seed(domain: str) -> None:
    a = render_frame(domain, 7, W, H)
    b = render_frame(domain, 7, W, H)
    c = render_frame(domain, 8, W, H)
    assert a.frame_id == f"{domain}-s7-w{W}x{H}-i0" and a.domain == domain
    assert a.image.shape == (H, W, 3) and a.image.dtype == np.uint8
    assert a.label.shape == (H, W) and a.label.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)
    assert np.mean(a.label != c.label) > 0.02


@pytest.mark.parametrize("domain", ["urban", "rural"])
def test_ground_truth_is_consistent(domain: str) -> None:
    frames = [render_frame(domain, seed, W, H) for seed in range(6)]
    for f in frames:
        assert set(np.unique(f.label).tolist()) <= VALID
        assert np.mean(f.label[:3] == SKY) > 0.1 or np.mean(f.label[:3] == BUILDING) > 0.3
        assert f.label[-1, W // 2] == ROAD
        assert np.mean(f.label[-H // 8 :, W // 3 : 2 * W // 3] == ROAD) > 0.9
        assert not np.any(f.label[: H // 4] == ROAD)
        # a textured scene, not flat blocks: many distinct colours on the road
        road = f.image[f.label == ROAD]
        assert len(np.unique(road, axis=0)) > 50
    present = _present(frames)
    if domain == "urban":
        assert {ROAD, SIDEWALK, BUILDING, POLE, VEG, SKY, PERSON, CAR} <= present
        assert TERRAIN not in present
    else:
        assert {ROAD, FENCE, POLE, VEG, TERRAIN, SKY} <= present
        assert SIDEWALK not in present


def test_domains_look_different() -> None:
    """The gap is real: the road itself has other colours in the two domains."""
    urban = [render_frame("urban", s, W, H) for s in range(4)]
    rural = [render_frame("rural", s, W, H) for s in range(4)]

    def road_rgb(frames: list[Frame]) -> np.ndarray:
        mean: np.ndarray = np.concatenate([f.image[f.label == ROAD] for f in frames]).mean(0)
        return mean

    u, r = road_rgb(urban), road_rgb(rural)
    assert abs(u[0] - u[2]) < 15  # grey asphalt
    assert r[0] - r[2] > 20  # brown or warm dirt
    assert np.abs(u - r).sum() > 60


def test_drive_is_coherent_and_random_access() -> None:
    drive = Drive("urban", seed=2, width=W, height=H)
    it = iter(drive)
    seq = [next(it) for _ in range(4)]
    for i, f in enumerate(seq):
        g = drive.frame(i)
        assert f.frame_id == g.frame_id == f"urban-s2-w{W}x{H}-i{i}"
        assert np.array_equal(f.image, g.image) and np.array_equal(f.label, g.label)
    near = np.mean(seq[0].label != seq[1].label)
    far = np.mean(seq[0].label != drive.frame(150).label)
    assert near < 0.08 and far > 0.15 and far > 3 * near
    diff_near = np.abs(seq[0].image.astype(int) - seq[1].image.astype(int)).mean()
    diff_far = np.abs(seq[0].image.astype(int) - drive.frame(150).image.astype(int)).mean()
    assert diff_near < diff_far


def test_rural_drive_moves_smoothly() -> None:
    """Objects stay in view while the camera moves; each step changes the picture a little."""
    drive = Drive("rural", seed=4, width=W, height=H)
    for i in (0, 10, 20):
        lab = drive.frame(i).label
        assert 0.05 < np.mean(~np.isin(lab, (ROAD, TERRAIN, SKY))) < 0.95
    steps = [
        np.abs(drive.frame(i).image.astype(int) - drive.frame(i + 1).image.astype(int)).mean()
        for i in (0, 10, 20)
    ]
    assert all(0 < d < 40 for d in steps)
    far = drive.frame(10**6)  # far along the route the renderer keeps its precision
    assert np.mean(far.label != drive.frame(10**6 + 1).label) < 0.08


def test_drive_switches_domain() -> None:
    """Urban until ``switch_at``; the countryside is seen approaching, then surrounds the camera."""
    drive = Drive("drive", seed=3, width=W, height=H, switch_at=150)
    early, late = drive.frame(0), drive.frame(200)
    assert early.domain == "urban" and late.domain == "rural"
    assert drive.frame(149).domain == "urban" and drive.frame(150).domain == "rural"
    assert early.frame_id == f"drive-s3-w{W}x{H}-k150-i0"
    assert SIDEWALK in early.label and np.mean(early.label == TERRAIN) < 0.01
    assert TERRAIN in late.label and SIDEWALK not in late.label
    assert np.mean(drive.frame(140).label == TERRAIN) > 0.1  # rural ground ahead


def test_frame_from_id_round_trip() -> None:
    for fid in ("drive-s3-w160x120-k40-i17", "urban-s5-w160x120-i0", "rural-s0-w96x64-i3"):
        f = frame_from_id(fid)
        assert f.frame_id == fid and f.image.shape[:2] == f.label.shape
    g = Drive("drive", seed=3, width=160, height=120, switch_at=40).frame(17)
    assert np.array_equal(frame_from_id(g.frame_id).image, g.image)
    assert np.array_equal(
        frame_from_id("urban-s5-w160x120-i0").label, render_frame("urban", 5, 160, 120).label
    )


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "city-s1-w160x120-i0",
        "urban-s1-w160x120",
        "urban-s1-w160x120-k30-i0",
        "drive-s1-w160x120-i0",
        "urban-s-1-w160x120-i0",
        "urban-s1-w8x8-i0",
        "urban-s1-w9999x120-i0",
        "urban-s01-w160x120-i0",
        "urban-s1-w160x120-i0/../x",
    ],
)
def test_bad_frame_ids_raise_protocol_error(bad: str) -> None:
    with pytest.raises(ProtocolError):
        frame_from_id(bad)


def test_bad_drive_arguments() -> None:
    with pytest.raises(ConfigError):
        Drive("city")
    with pytest.raises(ConfigError):
        Drive("urban", width=4)
    with pytest.raises(ValueError):
        render_frame("drive", 0)


def test_oracle_crop_equals_label_crop() -> None:
    oracle = OracleAnnotator(cache_size=2)
    f = Drive("drive", seed=1, width=W, height=H, switch_at=5).frame(9)
    crop = oracle.label_crop(f.frame_id, (10, 20, 80, 60))
    assert crop.dtype == np.uint8 and crop.shape == (60, 80)
    assert np.array_equal(crop, f.label[20:80, 10:90])
    crop[:] = 0  # the caller's copy; the cache stays intact
    assert np.array_equal(oracle.label_crop(f.frame_id, (10, 20, 80, 60)), f.label[20:80, 10:90])
    whole = oracle.label_crop(f.frame_id, (0, 0, W, H))
    assert np.array_equal(whole, f.label)
    for box in ((-1, 0, 10, 10), (0, 0, W + 1, 10), (0, 0, 0, 5), (W - 5, H - 5, 10, 10)):
        with pytest.raises(ProtocolError):
            oracle.label_crop(f.frame_id, box)
    with pytest.raises(ProtocolError):
        oracle.label_crop("nope", (0, 0, 1, 1))


def test_gallery_layout() -> None:
    grid = gallery_array(seeds=(0,), width=64, height=48)
    assert grid.shape == (48, 4 * 64 + 12, 3)
    labels = grid[:, 64 + 4 : 128 + 4]
    assert {tuple(c) for c in labels.reshape(-1, 3)} <= {tuple(c) for c in PALETTE} | {(0, 0, 0)}


def test_bench_reports_fps() -> None:
    result = bench_sim(seconds=0.6)
    assert set(result) == {"fps_640x480", "fps_320x240", "frames"}
    assert result["frames"] > 0
    assert result["fps_320x240"] > result["fps_640x480"] > 5
