"""``ars bench sim``: simulator frames per second on one core."""

from __future__ import annotations

import argparse
from typing import Any

from common.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from simulator.bench import bench_sim

    return bench_sim(seconds=args.seconds)
