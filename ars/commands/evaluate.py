"""`ars eval`: held-out urban and rural mIoU of a checkpoint, printed as JSON."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ars.commands.cli_util import parse_hw
from common.errors import ModelError
from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from models.training import evaluate
from simulator.sets import heldout_set


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ars eval`."""
    parser.add_argument("checkpoint", nargs="?", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--frames", type=int, default=50, help="held-out frames per domain")
    parser.add_argument("--size", type=parse_hw, default=(240, 320), help="inference size HxW")
    parser.add_argument("--seed", type=int, default=0, help="held-out set seed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")


def run(args: argparse.Namespace, settings: object = None) -> int:
    """Evaluate; exit 2 with a message on a bad checkpoint."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        model, meta = load_checkpoint(args.checkpoint)
    except ModelError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    start = time.monotonic()
    urban = evaluate(model, heldout_set("urban", args.frames, args.seed, args.size))
    rural = evaluate(model, heldout_set("rural", args.frames, args.seed, args.size))
    result = {
        "checkpoint": str(args.checkpoint),
        "arch": meta.arch,
        "version": meta.version,
        "dtype": meta.dtype,
        "size": f"{args.size[0]}x{args.size[1]}",
        "frames_per_domain": args.frames,
        "urban_miou": round(urban, 4),
        "rural_miou": round(rural, 4),
        "rural_over_urban": round(rural / max(1e-9, urban), 4),
        "seconds": round(time.monotonic() - start, 1),
    }
    print(json.dumps(result, indent=2))
    return 0
