"""The Cityscapes classes: names by trainId, colours, count, ignore value and the rare set.

The one home of the class list, so a real 19-class checkpoint reads our labels: the simulator
paints these ids, the models train on them, the server checks masks against them and the web page
receives the names and colours in its hello.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

NUM_CLASSES: int = len(CLASS_NAMES)
#: Label value of unlabelled pixels: no class, skipped by the loss and the metrics.
IGNORE = 255
#: Thin or seldom-seen classes; a frame that shows more of them ranks higher for annotation.
RARE_CLASSES: tuple[int, ...] = (3, 4, 5, 6, 7, 9, 12, 14, 15, 16, 17)

# trainIds by name (those the simulator paints), so code reads as words.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_SIGN = 0, 1, 2, 3, 4, 5, 7
VEGETATION, TERRAIN, SKY, PERSON, CAR = 8, 9, 10, 11, 13

_LUT = np.zeros((256, 3), dtype=np.uint8)
_LUT[: len(PALETTE)] = PALETTE
_LUT.setflags(write=False)


def colorize(mask: np.ndarray) -> np.ndarray:
    """Map a HxW trainId mask to HxWx3 uint8 colours; 255 (ignore) and unknown ids are black."""
    return _LUT[np.asarray(mask, dtype=np.uint8)]
