"""The simulated annotator's decisions (ars/bench/annotator_plan.py), on masks checked by hand."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ars.bench.annotator_plan import (
    accuracy,
    components,
    depth,
    largest_wrong,
    polygon,
    scribble,
)


def test_accuracy_ignores_the_pixels_the_truth_ignores() -> None:
    truth = np.array([[1, 1, 255, 2]], np.uint8)
    labels = np.array([[1, 0, 7, 2]], np.uint8)
    assert accuracy(labels, truth) == 2 / 3


def test_components_are_four_connected() -> None:
    mask = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]], bool)
    ids, n = components(mask)
    assert n == 3  # the diagonal neighbours are apart
    assert ids[0, 2] == ids[1, 1] == ids[1, 2] and ids[0, 0] != ids[2, 0]


def test_largest_wrong_area_its_class_and_skipping_a_failed_one() -> None:
    truth = np.zeros((10, 10), np.uint8)
    truth[:, 6:] = 3
    labels = np.zeros((10, 10), np.uint8)  # the 40 class-3 pixels are wrong
    labels[0, 0] = 5  # one wrong class-0 pixel
    target = largest_wrong(labels, truth)
    assert target is not None and target.cls == 3 and target.area == 40
    assert target.mask[:, 6:].all() and not target.mask[:, :6].any()
    other = largest_wrong(labels, truth, skip=[target.mask])
    assert other is not None and other.cls == 0 and other.area == 1


def test_scribble_stays_inside_and_depth_measures_thickness() -> None:
    mask = np.zeros((20, 30), bool)
    mask[5:15, 4:26] = True  # 10 rows thick: depth 4 (a 9x9 square fits, 11x11 does not)
    assert depth(mask) == 4
    (x0, y), (x1, y1) = scribble(mask, radius=4)
    assert y == y1 and 9 <= y <= 10 and x0 == 8 and x1 == 21


def test_polygon_outline_fills_the_area_as_the_editor_would() -> None:
    mask = np.zeros((40, 50), bool)
    mask[8:30, 10:41] = True
    mask[8:18, 25:41] = False  # an L shape
    vertices = polygon(mask)
    assert 4 <= len(vertices) <= 10
    image = Image.new("L", (50, 40))
    ImageDraw.Draw(image).polygon([(x + 0.5, y + 0.5) for x, y in vertices], fill=1, outline=1)
    filled = np.asarray(image).astype(bool)
    assert (filled & mask).sum() >= 0.97 * mask.sum()
    assert (filled & ~mask).sum() <= 0.1 * mask.sum()  # the outline runs on the border pixels
