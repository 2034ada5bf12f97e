"""Renderer throughput on one core: frames per second of a drive at two frame sizes."""

from __future__ import annotations

import json
import statistics
import time

from simulator.drive import Drive


def _fps(width: int, height: int, seconds: float, repeats: int = 3) -> tuple[float, int]:
    """Median fps over ``repeats`` runs of a drive that crosses from urban to rural."""
    drive = Drive("drive", seed=0, width=width, height=height, switch_at=60)
    drive.frame(0)  # build the cached textures outside the timed part
    drive.frame(100)
    rates: list[float] = []
    total = 0
    index = 0
    for _ in range(repeats):
        n = 0
        start = time.perf_counter()
        while True:
            drive.frame(index)
            index = (index + 1) % 120
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / repeats:
                break
        rates.append(n / elapsed)
        total += n
    return statistics.median(rates), total


def bench_sim(seconds: float = 3.0) -> dict[str, float]:
    """Frames per second at 640x480 and 320x240, on one core: the renderer uses only numpy
    element-wise ops, ``take`` and Pillow conversions, none of which start threads."""
    fps_big, n_big = _fps(640, 480, seconds / 2)
    fps_small, n_small = _fps(320, 240, seconds / 2)
    return {
        "fps_640x480": round(fps_big, 1),
        "fps_320x240": round(fps_small, 1),
        "frames": n_big + n_small,
    }


if __name__ == "__main__":
    print(json.dumps(bench_sim()))
