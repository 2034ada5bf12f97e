"""``ars bench domain-gap``: the shipped base model on held-out urban and rural frames."""

from __future__ import annotations

import argparse
import time
from typing import Any

from common.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=40, help="held-out frames per domain")
    parser.add_argument("--size", default=None, help="inference size WxH (default robot's)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint (default: shipped base)")
    parser.add_argument("--seed", type=int, default=1000, help="first held-out seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import torch

    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from models.training import evaluate
    from simulator.sets import heldout_set

    torch.set_num_threads(args.threads)
    if args.size:
        width, height = (int(v) for v in args.size.lower().split("x"))
    else:
        width, height = settings.robot.infer_width, settings.robot.infer_height
    model, meta = load_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT)
    start = time.perf_counter()
    urban = evaluate(model, heldout_set("urban", args.frames, args.seed, (height, width)))
    rural = evaluate(model, heldout_set("rural", args.frames, args.seed, (height, width)))
    return {
        "checkpoint": str(args.checkpoint or DEFAULT_CHECKPOINT.name),
        "arch": meta.arch,
        "version": meta.version,
        "size": f"{width}x{height}",
        "frames_per_domain": args.frames,
        "miou_urban": round(urban, 4),
        "miou_rural": round(rural, 4),
        "rural_over_urban": round(rural / urban, 4) if urban > 0 else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
