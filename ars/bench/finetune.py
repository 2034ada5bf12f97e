"""``ars bench finetune``: one server fine-tune timed on each device this machine has.

The server's recipe (``server.*``: batch, replay share, frozen blocks, training size) on the
shipped base, labeled route frames as the new domain and urban replay, the same iterations on
the CPU and, when present, on CUDA in the same run; ``cuda_speedup`` is their ratio. The GPU
check (``make gpu-check``) runs this and ``ars bench adaptation --quick`` on a GPU machine.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

from common.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iterations", type=int, default=50, help="iterations per device")
    parser.add_argument("--frames", type=int, default=16, help="labeled route frames")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--devices", default="auto", help="auto (cpu, and cuda if present) or a list"
    )
    parser.add_argument("--checkpoint", default=None, help="checkpoint (default: shipped base)")


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import torch

    from common.samples import resize_sample
    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from models.training import finetune
    from simulator.drive import Drive
    from simulator.sets import source_replay_set

    torch.set_num_threads(args.threads)
    ss = settings.server
    train_hw = (ss.train_height, ss.train_width)
    devices = ["cpu", "cuda"] if args.devices == "auto" else args.devices.split(",")
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
    base, meta = load_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT)
    route = Drive("route", seed=1, width=settings.robot.width, height=settings.robot.height)
    frames = [route.frame(i * 25) for i in range(args.frames)]
    samples = [resize_sample(f.image, f.label, train_hw) for f in frames]
    replay = source_replay_set(min(ss.replay_frames, 32), 0, train_hw)
    out: dict[str, Any] = {
        "version": meta.version,
        "iterations": args.iterations,
        "batch_size": ss.batch_size,
        "train_hw": list(train_hw),
        "frozen_blocks": ss.frozen_blocks,
        "devices": {},
    }
    for device in devices:
        model = copy.deepcopy(base).to(device)
        # as the server trains: its recipe, the base model as teacher (copied before the
        # clock starts, so the fine-tune alone is timed)
        recipe = {**ss.recipe(), "teacher": copy.deepcopy(base).to(device), "size": train_hw}
        finetune(model, samples, replay, iterations=2, **recipe)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = finetune(
            model,
            samples,
            replay,
            iterations=args.iterations,
            **recipe,
        )
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        out["devices"][device] = {
            "seconds": round(seconds, 2),
            "ms_per_iteration": round(1000 * seconds / args.iterations, 1),
            "final_loss": round(result.losses[-1], 4),
            "name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        }
    if {"cpu", "cuda"} <= set(out["devices"]):
        cpu, gpu = out["devices"]["cpu"]["seconds"], out["devices"]["cuda"]["seconds"]
        out["cuda_speedup"] = round(cpu / max(gpu, 1e-9), 1)
    return out
