"""`ars pretrain`: train a base model from scratch on urban simulator frames."""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from tqdm import tqdm

from ars.commands.cli_util import parse_hw
from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from models.network import ARCHS
from models.training import TrainProgress, evaluate, pretrain
from simulator.sets import heldout_set, pool_set

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `ars pretrain`."""
    parser.add_argument("--arch", choices=ARCHS, default="lraspp_mbv3_large")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    parser.add_argument(
        "--size", type=parse_hw, default=(240, 320), help="frame size HxW (inference size)"
    )
    parser.add_argument("--crop", type=parse_hw, default=None, help="training crop HxW")
    parser.add_argument("--pool", type=int, default=600, help="rendered frames kept in memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds of training; the lr schedule follows elapsed time and stops on time",
    )
    parser.add_argument("--eval-frames", type=int, default=50, help="held-out frames per domain")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--init", type=Path, default=None, help="continue from this checkpoint")
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--fp16", action="store_true", help="store weights as fp16")
    parser.add_argument("--version", default=None, help="version string (default: base-<date>)")


def run(args: argparse.Namespace, settings: object = None) -> int:
    """Train, measure held-out urban and rural mIoU, write the checkpoint; print JSON."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    init = load_checkpoint(args.init, expected_arch=args.arch)[0] if args.init else None
    start = time.monotonic()
    pool = pool_set(args.pool, args.seed, args.size)
    logger.info("pretrain: rendered %d frames in %.1f s", args.pool, time.monotonic() - start)
    start = time.monotonic()
    steps_done = 0
    with tqdm(total=args.steps, desc="pretrain", unit="step") as bar:

        def on_progress(p: TrainProgress) -> None:
            nonlocal steps_done
            steps_done = p.iteration
            bar.update(1)
            bar.set_postfix(loss=f"{p.loss:.3f}", lr=f"{p.lr:.2e}")

        model = pretrain(
            args.arch,
            pool_samples=pool,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            size=args.size,
            seed=args.seed,
            progress=on_progress,
            crop=args.crop,
            time_budget_s=args.time_budget,
            init=init,
        )
    train_s = time.monotonic() - start
    metrics = {
        "urban_miou": evaluate(model, heldout_set("urban", args.eval_frames, 0, args.size)),
        "rural_miou": evaluate(model, heldout_set("rural", args.eval_frames, 0, args.size)),
        "train_seconds": round(train_s, 1),
        "steps": float(steps_done),
    }
    metrics["rural_over_urban"] = metrics["rural_miou"] / max(1e-9, metrics["urban_miou"])
    version = args.version or f"base-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    meta = save_checkpoint(
        args.out,
        model,
        arch=args.arch,
        version=version,
        metrics=metrics,
        dtype="fp16" if args.fp16 else "fp32",
    )
    report = {
        "out": str(args.out),
        "bytes": Path(args.out).stat().st_size,
        "version": meta.version,
        "sha256": meta.weights_sha256,
        **metrics,
    }
    print(json.dumps(report, indent=2))
    return 0
