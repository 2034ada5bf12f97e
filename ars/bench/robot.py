"""``ars bench robot``: the robot agent's steady-state loop, previews on, once per runtime.

The real ``RobotAgent`` (camera ``sim:rural`` at 640x480 and 30 fps, default model and
settings) runs against the embedded broker in its own process, once per runtime row: torch and
onnxruntime at the default inference size, and onnxruntime at the full camera size. Stage times
are read by wrapping the agent's own calls (inference, mining, storing the candidate, preview
encoding, the whole per-frame handling), so they are the times inside the running loop,
contention included. Each row carries the mIoU of its inference size (held-out urban and rural
frames, as ``ars bench domain-gap``; computed with torch, whose logits onnxruntime matches
within 1e-3), so the default is chosen on speed and accuracy together. A sweep then measures
the torch inference choices (resolution, threads, memory format, model variant) alone.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ars.bench._harness import (
    bench_checkpoint,
    broker,
    cpu_cores,
    load_average,
    median,
    percentile,
    r,
)
from common.config import Settings, load_settings

T = TypeVar("T")


MIN_FRAMES = 5  # measured frames at the least, whatever --seconds says


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="measured steady state")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring")
    parser.add_argument("--infer-size", default=None, help="WxH (default: robot setting)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--camera-fps", type=float, default=None, help="camera rate")
    parser.add_argument("--preview-fps", type=float, default=None, help="previews per second")
    parser.add_argument("--arch", default="lraspp_mbv3_large", help="model variant")
    parser.add_argument("--no-sweep", action="store_true", help="skip the inference sweep")
    parser.add_argument("--miou-frames", type=int, default=20, help="frames per domain (sweep)")
    parser.add_argument(
        "--runtimes", default="torch,onnx", help="runtime rows at the inference size (comma list)"
    )
    parser.add_argument(
        "--full-size", default="640x480", help="WxH of the extra onnx row ('' to skip it)"
    )
    parser.add_argument("--tiny", action="store_true", help="smoke setting: tiny model, 2 s")


def _timed(fn: Callable[..., T], sink: list[float]) -> Callable[..., T]:
    def wrapper(*args: Any, **kwargs: Any) -> T:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append((time.perf_counter() - start) * 1000.0)

    return wrapper


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


async def _agent_run(
    args: argparse.Namespace, work: Path, runtime: str, infer_size: str | None
) -> dict[str, Any]:
    import robot_agent.agent as agent_mod
    import robot_agent.inference as inference_mod
    from robot_agent.agent import RobotAgent

    arch = "tiny" if args.tiny else args.arch
    ckpt = bench_checkpoint(work, arch=arch)
    robot: dict[str, Any] = {"source": "sim:rural", "model": str(ckpt), "runtime": runtime}
    if infer_size:
        robot["infer_width"], robot["infer_height"] = _size(infer_size)
    for name in ("threads", "camera_fps", "preview_fps"):
        if getattr(args, name) is not None:
            robot[name] = getattr(args, name)
    stages: dict[str, list[float]] = {
        k: [] for k in ("process", "mining", "preview", "keep", "region", "store")
    }
    done_at: list[float] = []
    infer_ms: list[float] = []
    async with broker("amqtt", work, ["rover1"]) as b:
        settings = load_settings(
            None,
            environ={},
            overrides={
                "data_dir": str(work / f"robot-{runtime}-{infer_size}"),
                "mqtt": {"url": b.url("robot-rover1")},
                "robot": robot,
            },
        )
        # the agent's own calls, wrapped for timing (restored below)
        real_mine = getattr(inference_mod, "mine")  # noqa: B009
        real_preview = getattr(agent_mod, "preview_payload")  # noqa: B009
        real_region = getattr(agent_mod, "region_parts")  # noqa: B009
        setattr(inference_mod, "mine", _timed(real_mine, stages["mining"]))  # noqa: B010
        setattr(agent_mod, "preview_payload", _timed(real_preview, stages["preview"]))  # noqa: B010
        setattr(agent_mod, "region_parts", _timed(real_region, stages["region"]))  # noqa: B010
        try:
            async with RobotAgent(settings) as agent:
                await agent.link.wait_connected(10.0)
                await asyncio.wait_for(agent.runtime_ready.wait(), 900.0)
                running = agent.slot.current.runtime
                agent.store.add = _timed(agent.store.add, stages["store"])  # type: ignore[method-assign]
                worker = agent.worker
                real_process, real_keep = worker.process, agent._keep

                def process(frame_id: str, image: Any) -> Any:
                    start = time.perf_counter()
                    result = real_process(frame_id, image)
                    stages["process"].append((time.perf_counter() - start) * 1000.0)
                    infer_ms.append(result.infer_ms)
                    return result

                def keep(stored: Any, preview: Any) -> Any:
                    start = time.perf_counter()
                    out = real_keep(stored, preview)
                    done_at.append(time.perf_counter())
                    stages["keep"].append((done_at[-1] - start) * 1000.0)
                    return out

                worker.process = process  # type: ignore[method-assign]
                agent._keep = keep  # type: ignore[method-assign]
                await agent.begin_segmentation()
                await asyncio.sleep(args.warmup)
                for values in (*stages.values(), done_at, infer_ms):
                    values.clear()
                cpu0, t0 = os.times(), time.perf_counter()
                await asyncio.sleep(args.seconds)
                # a loaded machine (e.g. other benches starting) can stall the first frames:
                # measure over at least MIN_FRAMES, however long they take (bounded)
                deadline = time.perf_counter() + 60.0
                while len(done_at) < MIN_FRAMES and time.perf_counter() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                cpu1, t1 = os.times(), time.perf_counter()
                n = len(done_at)
                await agent.end_segmentation()
                rs = agent.rs
        finally:
            setattr(inference_mod, "mine", real_mine)  # noqa: B010
            setattr(agent_mod, "preview_payload", real_preview)  # noqa: B010
            setattr(agent_mod, "region_parts", real_region)  # noqa: B010
    gaps = [(b2 - a) * 1000.0 for a, b2 in itertools.pairwise(done_at)]
    fps = (n - 1) / (done_at[-1] - done_at[0]) if n > 1 else 0.0
    infer_p50 = median(infer_ms)
    mining_p50 = median(stages["mining"])
    cpu_used = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0)
    loop_p50 = median(gaps)
    return {
        "runtime": running,
        "fps": r(fps),
        "infer_ms_p50": r(infer_p50),
        "mining_ms_p50": r(mining_p50, 3),
        "preview_encode_ms_p50": r(median(stages["preview"])),
        "region_ms_p50": r(median(stages["region"])),
        "store_ms_p50": r(median(stages["store"])),
        "loop_ms_p50": r(loop_p50),
        "loop_ms_p90": r(percentile(gaps, 90)),
        "mining_over_infer": r(mining_p50 / infer_p50, 4) if infer_p50 > 0 else None,
        # the frame time is what mining must be negligible against
        "mining_over_frame": r(mining_p50 / loop_p50, 4) if loop_p50 > 0 else None,
        "cpu_cores": cpu_cores(),
        "process_ms_p50": r(median(stages["process"])),
        "keep_ms_p50": r(median(stages["keep"])),
        "frames": n,
        "seconds": r(t1 - t0, 1),
        "agent_cpu_cores_used": r(cpu_used),
        # CPU time the agent spends per frame: the load-independent cost (fps on two free
        # cores is at most 2000 / this when the work spreads over both)
        "cpu_ms_per_frame": r(cpu_used * 1000.0 / fps, 1) if fps > 0 else None,
        "camera": f"sim:rural {rs.width}x{rs.height} at {rs.camera_fps:g} fps",
        "infer_size": f"{rs.infer_width}x{rs.infer_height}",
        "threads": inference_mod.inference_threads(rs.threads),
        "preview_fps": rs.preview_fps,
        "arch": arch,
        "model": ckpt.name,
    }


def frame_costs(args: argparse.Namespace, work: Path, infer_size: str) -> dict[str, Any]:
    """What each part of a frame costs alone: the agent's own functions called one after
    another in this process on ``sim:rural`` frames (seed 0), median ms over the frames, with
    how often the robot runs each at its settings (per frame, per stored frame, per preview)."""
    import torch

    from common.config import RobotSettings
    from models.checkpoint import load_checkpoint
    from models.mining import mine
    from models.network import preprocess
    from robot_agent.candidates import CandidateStore
    from robot_agent.frames import preview_payload, region_parts
    from robot_agent.inference import FrameResult, LoadedModel, inference_threads
    from robot_agent.runtime import Runtime, default_cache
    from simulator.drive import Drive

    rs = RobotSettings()
    w, h = _size(infer_size)
    threads = inference_threads(args.threads if args.threads is not None else rs.threads)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    model, meta = load_checkpoint(bench_checkpoint(work, arch="tiny" if args.tiny else args.arch))
    loaded = LoadedModel(model=model, meta=meta, sha256="-")
    runtime = Runtime("auto", cache=default_cache(os.environ), threads=threads, infer_hw=(h, w))
    loaded = asyncio.run(runtime.prepare(loaded))
    net = loaded.onnx or model
    drive = Drive("rural", seed=0, width=rs.width, height=rs.height, switch_at=0)
    store = CandidateStore(work / "frame-costs", rs.max_candidates)
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[..., T], *a: Any, **k: Any) -> T:
        start = time.perf_counter()
        out = fn(*a, **k)
        times.setdefault(name, []).append((time.perf_counter() - start) * 1000.0)
        return out

    try:
        for i in range(8 if args.tiny else 20):
            frame = timed("camera_render", drive.frame, i)
            x = timed("preprocess", preprocess, frame.image, (h, w))
            with torch.inference_mode():
                low = timed("inference", net.forward_lowres, x)[0]
            mining = timed("mining", mine, low, frame.image.shape[:2], rs.region_frac, None)
            result = FrameResult(
                frame_id=f"cost-{i}", image=frame.image, logits=low.float(), infer_hw=(h, w),
                mining=mining, infer_ms=0.0, model_version=meta.version,
            )  # fmt: skip
            parts = timed("region", region_parts, result)
            timed("store", store.add, *parts)
            timed(
                "preview", preview_payload, result, robot_id="bench", width=w, height=h,
                quality=rs.preview_quality, fps=0.0,
            )  # fmt: skip
    finally:
        store.close()
        torch.set_num_threads(threads_before)
    per_frame = 1.0 / rs.store_every
    camera_fps = args.camera_fps if args.camera_fps is not None else rs.camera_fps
    preview_fps = args.preview_fps if args.preview_fps is not None else rs.preview_fps
    per_preview = min(1.0, preview_fps / camera_fps)
    every = {"region": per_frame, "store": per_frame, "preview": per_preview}
    ms = {k: median(v) for k, v in times.items()}
    return {
        "runtime": loaded.runtime,
        "infer_size": infer_size,
        "ms_p50": {k: r(v) for k, v in ms.items()},
        "share_of_frames": {k: r(every.get(k, 1.0), 3) for k in ms},
        "ms_per_frame": r(sum(v * every.get(k, 1.0) for k, v in ms.items())),
        "ms_per_frame_without_render": r(
            sum(v * every.get(k, 1.0) for k, v in ms.items() if k != "camera_render")
        ),
        "frames": len(times["inference"]),
    }


def miou_at(
    sizes: list[tuple[int, int]], frames: int
) -> dict[tuple[int, int], tuple[float, float]]:
    """(urban, rural) mIoU of the shipped base model at each (W, H), on the held-out frames
    ``ars bench domain-gap`` uses; empty when the base model is not there."""
    import torch

    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from models.training import evaluate
    from simulator.sets import heldout_set

    if not DEFAULT_CHECKPOINT.is_file() or frames <= 0:
        return {}
    base, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return {
            (w, h): (
                evaluate(base, heldout_set("urban", frames, 1000, (h, w))),
                evaluate(base, heldout_set("rural", frames, 1000, (h, w))),
            )
            for w, h in sizes
        }
    finally:
        torch.set_num_threads(threads_before)


def sweep(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Inference alone for each choice, with its mIoU when the trained base model exists.

    The choices are timed in interleaved rounds (one inference of each per round, median over
    rounds), so that other load on the machine falls on all of them alike.
    """
    import torch

    from models.checkpoint import load_checkpoint
    from models.network import SegNet, preprocess
    from simulator.scene import render_frame

    image = render_frame("rural", 7).image
    large, small = "lraspp_mbv3_large", "lraspp_mbv3_small"
    choices: list[tuple[str, tuple[int, int], int, bool]] = [
        (large, (640, 480), 2, False),
        (large, (320, 240), 2, False),
        (large, (320, 240), 1, False),
        (large, (320, 240), 2, True),
        (large, (320, 240), 1, True),
        (large, (256, 192), 2, False),
        (small, (640, 480), 2, False),
        (small, (320, 240), 2, False),
    ]
    rounds = 3 if args.tiny else 9
    if args.tiny:
        choices = [("tiny", (160, 120), 1, False), ("tiny", (160, 120), 1, True)]
    models: dict[tuple[str, bool], SegNet] = {}
    for arch, _, _, channels_last in choices:
        if (arch, channels_last) not in models:
            model, _ = load_checkpoint(bench_checkpoint(work, arch=arch))
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            models[(arch, channels_last)] = model.eval().to(memory_format=fmt)
    times: list[list[float]] = [[] for _ in choices]
    threads_before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            for i in range(rounds + 1):
                for k, (arch, (w, h), threads, channels_last) in enumerate(choices):
                    torch.set_num_threads(threads)
                    fmt = torch.channels_last if channels_last else torch.contiguous_format
                    start = time.perf_counter()
                    x = preprocess(image, (h, w)).contiguous(memory_format=fmt)
                    models[(arch, channels_last)].forward_lowres(x)
                    if i > 0:  # round 0 warms up
                        times[k].append((time.perf_counter() - start) * 1000.0)
        large_sizes = sorted({(w, h) for arch, (w, h), _, _ in choices if arch == large})
        miou = {(large, size): m for size, m in miou_at(large_sizes, args.miou_frames).items()}
    finally:
        torch.set_num_threads(threads_before)
    rows: list[dict[str, Any]] = []
    for k, (arch, (w, h), threads, channels_last) in enumerate(choices):
        m = miou.get((arch, (w, h)))
        rows.append(
            {
                "arch": arch,
                "size": f"{w}x{h}",
                "threads": threads,
                "channels_last": channels_last,
                "infer_ms_p50": r(median(times[k])),
                "miou_urban": r(m[0], 4) if m else None,
                "miou_rural": r(m[1], 4) if m else None,
            }
        )
    return rows


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if args.tiny:
        args.seconds = min(args.seconds, 2.0)
        args.warmup = min(args.warmup, 1.0)
        args.infer_size = args.infer_size or "160x120"
        args.full_size = args.full_size and "320x240"
    default_size = args.infer_size or f"{settings.robot.infer_width}x{settings.robot.infer_height}"
    cases = [(rt.strip(), default_size) for rt in args.runtimes.split(",") if rt.strip()]
    if args.full_size:
        cases.append(("onnx", args.full_size))
    load_before = load_average()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ars-bench-robot-") as tmp:
        work = Path(tmp)
        for runtime, size in cases:
            rows.append(asyncio.run(_agent_run(args, work, runtime, size)))
        costs = frame_costs(args, work, default_size)
        sweep_rows = None if args.no_sweep else sweep(args, work)
    if not args.tiny:
        sizes = sorted({_size(row["infer_size"]) for row in rows})
        miou = miou_at(sizes, args.miou_frames)
        for row in rows:
            m = miou.get(_size(row["infer_size"]))
            row["miou_urban"] = r(m[0], 4) if m else None
            row["miou_rural"] = r(m[1], 4) if m else None
    # the headline: the first onnx row at the default size (the robot's default runtime)
    main = next((x for x in rows if x["runtime"] == "onnx"), rows[0])
    result: dict[str, Any] = dict(main)
    result["runtime"] = rows  # the headline's own runtime is in each row
    result["frame_costs"] = costs
    if sweep_rows is not None:
        result["sweep"] = sweep_rows
    fps, mining = main["fps"], main["mining_over_frame"]
    result["targets"] = {
        "fps_at_least_28": bool(fps is not None and fps >= 28),
        "mining_over_frame_at_most_0.02": bool(mining is not None and mining <= 0.02),
    }
    result["load_average"] = {"before": load_before, "after": load_average()}
    return result
