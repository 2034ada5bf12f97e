"""``ars bench mining``: the robot's mining cost against inference and the paper's reference.

Inference, entropy at the logits' resolution and the summed-area-table window search, at
640x480 with the default model; in the same run the paper's way (softmax entropy at full
resolution, average pool over every window position) as the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from common.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per stage")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--size", default="640x480", help="frame size WxH")


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from models.entropy import normalized_entropy
    from models.mining import hardest_window, hardest_window_reference
    from models.network import preprocess
    from simulator.scene import render_frame

    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    model, meta = load_checkpoint(DEFAULT_CHECKPOINT)
    model.eval()
    frame = render_frame("rural", 7, width=width, height=height)
    x = preprocess(frame.image)
    with torch.inference_mode():
        low = model.forward_lowres(x)[0]
        full = model(x)[0]

    def infer() -> object:
        with torch.inference_mode():
            return model.forward_lowres(x)

    ent_low = normalized_entropy(low)
    win_h, win_w = round(ent_low.shape[0] * 0.5), round(ent_low.shape[1] * 0.5)
    ent_full = normalized_entropy(full)
    ref_h, ref_w = height // 2, width // 2

    def reference_window() -> object:
        t = torch.from_numpy(ent_full)[None, None]
        pooled = F.avg_pool2d(t, (ref_h, ref_w), stride=1)
        return int(torch.argmax(pooled))

    infer_ms = _median_ms(infer, args.repeats)
    entropy_ms = _median_ms(lambda: normalized_entropy(low), args.repeats * 3)
    entropy_full_ms = _median_ms(lambda: normalized_entropy(full), args.repeats)
    window_ms = _median_ms(lambda: hardest_window(ent_low, win_h, win_w), args.repeats * 3)
    reference_window_ms = _median_ms(reference_window, max(1, args.repeats // 3))
    y, x0, value = hardest_window(ent_low, win_h, win_w)
    ry, rx, rvalue = hardest_window_reference(ent_low, win_h, win_w)
    return {
        "size": f"{width}x{height}",
        "arch": meta.arch,
        "logits_hw": list(ent_low.shape),
        "infer_ms": round(infer_ms, 2),
        "entropy_ms": round(entropy_ms, 3),
        "entropy_fullres_ms": round(entropy_full_ms, 2),
        "window_ms": round(window_ms, 3),
        "reference_window_ms": round(reference_window_ms, 1),
        "mining_over_infer": round((entropy_ms + window_ms) / infer_ms, 4),
        "reference_over_ours": round(
            (entropy_full_ms + reference_window_ms) / (entropy_ms + window_ms), 1
        ),
        "same_window_as_reference_lowres": bool((y, x0) == (ry, rx) and abs(value - rvalue) < 1e-4),
        "threads": args.threads,
        "np_version": np.__version__,
    }
