"""``ars bench loop``: the whole loop headless, with the oracle annotator, stage by stage.

Broker, server and robot run as ``ars broker`` / ``ars server`` / ``ars robot`` processes (the
robot on ``sim:rural``, the domain it was not trained for); this process is the operator: it
presses the buttons over MQTT as the web UI does, runs ``ars annotate --oracle`` as a process,
and timestamps every answer. Stages: collect (segmenting for ``--frames`` frames; not part of
the loop's total), transfer data, annotate (session open, oracle labels, session closed),
fine-tune (training iterations), evaluate (the rest of the job: loading, metrics before and
after, saving), transfer model (offer to the robot's ``active``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from ars.bench._harness import (
    Broker,
    Observer,
    Proc,
    bench_checkpoint,
    broker,
    json_obj,
    load_average,
    online,
    r,
    spawn,
    stop,
)
from common.config import MqttSettings, Settings

RID = "rover1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=100, help="frames to collect first")
    parser.add_argument("--iterations", type=int, default=None, help="fine-tune iterations")
    parser.add_argument("--tiny", action="store_true", help="smoke setting: tiny model, small")


class Operator:
    """Presses buttons and waits for their answers on the observer's record."""

    def __init__(self, b: Broker, obs: Observer) -> None:
        self.b = b
        self.obs = obs

    async def press(
        self, cmd: str, timeout: float = 300.0, **args: Any
    ) -> tuple[float, float, dict[str, Any]]:
        """(sent at, answered at, done event); RuntimeError unless the answer is ``done``."""
        from common.mqtt import make_client
        from common.schemas import Command

        command = Command(cmd=cmd, args=args)
        start_index = len(self.obs.messages)
        async with make_client(MqttSettings(url=self.b.url("operator"))) as c:
            t0 = time.perf_counter()
            await c.publish(self.b.topics.robot_cmd(RID), command.to_json(), qos=1)

        def answer(topic: str, payload: bytes) -> Any:
            d = json_obj(payload) if topic.endswith("/events") else None
            ok = (
                d and d.get("ref") == command.id and d.get("kind") in ("done", "failed", "rejected")
            )
            return d if ok else None

        _, (t1, event) = await self.obs.wait(answer, start_index, timeout)
        if event["kind"] != "done":
            raise RuntimeError(f"{cmd}: {event['kind']}: {event.get('msg')}")
        return t0, t1, event


def _cpu_seconds(proc: Proc) -> float:
    """User + system CPU seconds of a process so far (load-independent work)."""
    import psutil

    times = psutil.Process(proc.process.pid).cpu_times()
    return float(times.user + times.system)


async def _run(args: argparse.Namespace, work: Path, prefix: str) -> dict[str, Any]:
    arch = "tiny" if args.tiny else "lraspp_mbv3_large"
    ckpt = bench_checkpoint(work, arch=arch)
    server_flags: list[str] = ["--base-model", str(ckpt), "--no-gate"]
    robot_flags: list[str] = ["--model", str(ckpt), "--source", "sim:rural", "--id", RID]
    iterations = args.iterations
    if args.tiny:
        iterations = iterations or 3
        server_flags += ["--eval-frames", "2", "--replay-frames", "4", "--threads", "1"]
        robot_flags += ["--infer-size", "160x120", "--size", "320x240"]
    if iterations:
        server_flags += ["--iterations", str(iterations)]
    env_server = (
        {"ARS_SERVER__TRAIN_WIDTH": "80", "ARS_SERVER__TRAIN_HEIGHT": "60"} if args.tiny else {}
    )
    stages: dict[str, float] = {}
    procs: list[Proc] = []
    async with broker("amqtt", work, [RID], prefix) as b:
        topics = b.topics
        obs = Observer([topics.robot_all(RID), topics.server_events, topics.server_state])
        ready = asyncio.Event()
        obs_task = asyncio.create_task(obs.run(MqttSettings(url=b.url("operator")), ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            procs.append(await spawn(
                "server", ["server", "--data-dir", str(work / "server"), *server_flags],
                work / "logs", env={**b.env("server"), **env_server},
            ))  # fmt: skip
            procs.append(await spawn(
                "robot", ["robot", "--data-dir", str(work / "robot"), *robot_flags],
                work / "logs", env=b.env(f"robot-{RID}"),
            ))  # fmt: skip

            await obs.wait(online("server/state"), 0, timeout=120)
            await obs.wait(online(f"robots/{RID}/state"), 0, timeout=120)
            op = Operator(b, obs)

            # collect frames (not part of the loop's total)
            t0, _, _ = await op.press("start_segmentation")
            mark = len(obs.messages)

            def frames_at_least(topic: str, payload: bytes) -> Any:
                d = json_obj(payload) if topic.endswith(f"robots/{RID}/state") else None
                return d if d and int(d.get("frames", 0)) >= args.frames else None

            _, (t1, state) = await obs.wait(frames_at_least, mark, timeout=600)
            await op.press("stop_segmentation")
            stages["collect_s"] = t1 - t0
            frames = int(state["frames"])

            a, z, data_done = await op.press("transfer_data", timeout=120)
            stages["transfer_data_s"] = z - a
            up = data_done.get("data", {})

            a, _, _ = await op.press("start_annotation")
            annotator = await spawn(
                "annotate", ["annotate", "--oracle", "--robot", RID], work / "logs",
                env=b.env("operator"),
            )  # fmt: skip
            code = await annotator.process.wait()
            if code != 0:
                raise RuntimeError(f"ars annotate failed: {annotator.log.read_text()[-2000:]}")
            _, z, _ = await op.press("stop_annotation")
            stages["annotate_s"] = z - a

            mark = len(obs.messages)
            cpu0 = _cpu_seconds(procs[0])
            a, z, tune_done = await op.press("start_finetune", timeout=1800)
            stages["finetune_job_server_cpu_s"] = _cpu_seconds(procs[0]) - cpu0
            last_progress: dict[str, Any] = {}
            for _, topic, payload in obs.messages[mark:]:
                d = json_obj(payload) if topic == topics.server_events else None
                if d and d.get("kind") == "progress":
                    last_progress = d.get("data", {})
            train_s = float(last_progress.get("elapsed_s", 0.0))
            stages["finetune_s"] = train_s
            stages["evaluate_s"] = (z - a) - train_s

            mark = len(obs.messages)
            a, z, model_done = await op.press("transfer_model", timeout=300, force=True)

            def active(topic: str, payload: bytes) -> Any:
                d = json_obj(payload) if topic.endswith("model/status") else None
                return d if d and d.get("state") == "active" else None

            _, (t_active, _) = await obs.wait(active, mark, timeout=60)
            stages["transfer_model_s"] = max(z, t_active) - a
        finally:
            obs_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await obs_task
            await stop(procs)
    tune = tune_done.get("data", {})
    model = model_done.get("data", {})
    loop_stages = ("transfer_data_s", "annotate_s", "finetune_s", "evaluate_s", "transfer_model_s")
    total = sum(stages[k] for k in loop_stages)
    bytes_up = int(up.get("bytes_sent", 0))
    full = int(up.get("full_frames_bytes", 0))
    iters = int(last_progress.get("iterations", iterations or 100))
    return {
        **{k: r(v) for k, v in stages.items()},
        "total_s": r(total),
        "frames": frames,
        "regions": up.get("regions"),
        "bytes_up": bytes_up,
        "full_frames_bytes": full,
        "bytes_up_over_full_frames": r(bytes_up / full, 4) if full else None,
        "bytes_down": model.get("bytes"),
        "iterations": iters,
        # the loop's total as it would be at the default 100 iterations (same per-iteration time)
        "total_s_at_100_iterations": r(total - train_s + 100 * train_s / iters) if iters else None,
        "finetune_s_per_iteration": r(train_s / iters, 3) if iters else None,
        "job_seconds": tune.get("seconds"),
        "metrics_before": tune.get("metrics_before"),
        "metrics_after": tune.get("metrics_after"),
        "version": tune.get("version"),
        "arch": arch,
        "model": ckpt.name,
    }


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if args.tiny:
        args.frames = min(args.frames, 10)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="ars-bench-loop-") as tmp:
        result = asyncio.run(_run(args, Path(tmp), settings.prefix))
    ratio = result["bytes_up_over_full_frames"]
    result["targets"] = {
        "bytes_up_over_full_frames_at_most_0.06": bool(ratio is not None and ratio <= 0.06),
        "finetune_100_iterations_under_90s": bool(
            result["finetune_s_per_iteration"] is not None
            and result["finetune_s_per_iteration"] * 100 < 90
        ),
        "total_under_150s": bool(
            result["total_s_at_100_iterations"] is not None
            and result["total_s_at_100_iterations"] < 150
        ),
    }
    result["load_average"] = {"before": load_before, "after": load_average()}
    return result
