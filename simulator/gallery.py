"""A picture of what the simulator draws: frames beside their colourised ground truth."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.classes import colorize
from simulator.scene import render_frame

logger = logging.getLogger(__name__)


def gallery_array(
    seeds: Sequence[int] = (0, 1, 2), width: int = 400, height: int = 300
) -> np.ndarray:
    """One row per seed: urban frame, its labels, rural frame, its labels (4 px gutters)."""
    gap = 4
    rows = []
    for seed in seeds:
        tiles = []
        for domain in ("urban", "rural"):
            frame = render_frame(domain, seed, width, height)
            tiles += [frame.image, colorize(frame.label)]
        row = np.full((height, 4 * width + 3 * gap, 3), 255, dtype=np.uint8)
        for j, tile in enumerate(tiles):
            row[:, j * (width + gap) : j * (width + gap) + width] = tile
        rows.append(row)
    grid = np.full((len(rows) * (height + gap) - gap, rows[0].shape[1], 3), 255, np.uint8)
    for i, row in enumerate(rows):
        grid[i * (height + gap) : i * (height + gap) + height] = row
    return grid


def save_gallery(
    path: str | Path, seeds: Sequence[int] = (0, 1, 2), width: int = 400, height: int = 300
) -> Path:
    """Write the gallery PNG to ``path`` and return it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gallery_array(seeds, width, height)).save(out, optimize=True)
    logger.info("wrote simulator gallery %s (seeds %s)", out, list(seeds))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default="docs/sim_examples.png")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    save_gallery(args.path, args.seeds)


if __name__ == "__main__":
    main()
