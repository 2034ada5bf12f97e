"""``ars bench fleet``: N simulated robots on one broker, server and web app, previews on.

With ``--light`` the robots are light ones (``ars.bench.fleet_light``): the server-side knee.

Every part is its own process as deployed (``ars broker`` or Mosquitto, ``ars server``,
``ars web``, N x ``ars robot --source sim:rural``); psutil reads each one's CPU (100 = one
core) and peak RSS. For each N the robots start fresh, segment for ``--seconds``, and report
their frame rate in their retained state. A WebSocket client of the web app counts the previews
it gets; an MQTT observer counts those the broker delivered: dropped previews are the
difference (the web app's latest-wins queues), and previews the robots did not produce at their
``preview_fps`` show in ``preview_rate_per_robot``.
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
    Sampler,
    bench_checkpoint,
    broker,
    cpu_cores,
    json_obj,
    load_average,
    median,
    r,
    server_and_web,
    spawn,
    stop,
    wait_port,
)
from common.config import MqttSettings, Settings

MIB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--robots", help="fleet sizes (default 1,4,8; light: 10,50,200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per N")
    parser.add_argument("--broker", default="amqtt", choices=["amqtt", "mosquitto"])
    parser.add_argument(
        "--tiny", action="store_true", help="smoke setting: 1 tiny robot (light: 3), 2-3 s"
    )
    light = parser.add_argument_group("light robots (ars.bench.fleet_light)")
    light.add_argument(
        "--light", action="store_true",
        help="light robots: a real robot's previews, states and region transfers, no model",
    )  # fmt: skip
    light.add_argument(
        "--transfer-every", type=float, default=10.0,
        help="seconds between a light robot's transfers (0: none, previews and states alone)",
    )  # fmt: skip
    light.add_argument(
        "--keep-going", action="store_true", help="run the larger sizes after one fails"
    )
    light.add_argument("--per-host", type=int, default=100, help="light robots per process")
    light.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")


async def count_ws_previews(url: str, counter: list[int], ready: asyncio.Event) -> None:
    import aiohttp

    from common.envelope import MAGIC

    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        ready.set()
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY and bytes(msg.data[:4]) == MAGIC:
                counter[0] += 1


async def send(b: Broker, rid: str, cmd: str) -> None:
    from common.mqtt import make_client
    from common.schemas import Command

    async with make_client(MqttSettings(url=b.url("operator"))) as c:
        await c.publish(b.topics.robot_cmd(rid), Command(cmd=cmd).to_json(), qos=1)


async def one_size(
    n: int,
    args: argparse.Namespace,
    b: Broker,
    work: Path,
    base: dict[str, int],
    ws_url: str,
    robot_flags: list[str],
) -> dict[str, Any]:
    rids = [f"rover{i + 1}" for i in range(n)]
    obs = Observer([b.topics.all_robots("state"), b.topics.all_robots("preview")])
    ready = asyncio.Event()
    obs_task = asyncio.create_task(obs.run(MqttSettings(url=b.url("operator")), ready))
    robots: list[Proc] = []
    ws_count = [0]
    ws_ready = asyncio.Event()
    ws_task = asyncio.create_task(count_ws_previews(ws_url, ws_count, ws_ready))
    try:
        await asyncio.wait_for(asyncio.gather(ready.wait(), ws_ready.wait()), 15)
        for rid in rids:
            robots.append(await spawn(
                rid, ["robot", "--data-dir", str(work / rid), "--id", rid, *robot_flags],
                work / "logs", env=b.env(f"robot-{rid}"),
            ))  # fmt: skip
        for rid in rids:

            def online(topic: str, payload: bytes, rid: str = rid) -> Any:
                d = json_obj(payload) if topic == b.topics.robot_state(rid) else None
                return d if d and d.get("online") else None

            await obs.wait(online, 0, timeout=180)
        for rid in rids:
            await send(b, rid, "start_segmentation")
        await asyncio.sleep(5.0 if not args.tiny else 1.0)  # warm-up
        pids = {k: v for k, v in base.items()}
        pids.update(
            {rid: p.process.pid for rid, p in zip(rids, robots, strict=True) if p.process.pid}
        )
        sampler = Sampler(pids, interval=1.0)
        sampler.start()
        sample_task = asyncio.create_task(sampler.run())
        mark = len(obs.messages)
        ws0 = ws_count[0]
        t0 = time.perf_counter()
        await asyncio.sleep(args.seconds)
        t1 = time.perf_counter()
        cpu = {name: sampler.cpu_percent(name) for name in pids}
        ws_got = ws_count[0] - ws0
        sample_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sample_task
        sampler.sample()
        window = [m for m in obs.messages[mark:] if m[0] <= t1]
        previews = sum(1 for _, topic, _ in window if topic.endswith("/preview"))
        fps: dict[str, float] = {}
        for _, topic, payload in window:
            if topic.endswith("/state"):
                d = json_obj(payload)
                if d and d.get("segmenting"):
                    fps[str(d.get("robot_id"))] = float(d.get("fps", 0.0))
        for rid in rids:
            await send(b, rid, "stop_segmentation")
    finally:
        await stop(robots)
        for task in (obs_task, ws_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    seconds = t1 - t0
    rss = {name: sampler.usage[name].max_rss for name in pids}
    robot_cpu = [cpu[rid] for rid in rids]
    return {
        "robots": n,
        "robot_fps_mean": r(sum(fps.values()) / n if fps else 0.0),
        "robot_fps_min": r(min(fps.values()) if fps else 0.0),
        "fleet_fps": r(sum(fps.values())),
        "robot_cpu_percent_mean": r(sum(robot_cpu) / n, 1),
        "broker_cpu_percent": r(cpu["broker"], 1),
        "server_cpu_percent": r(cpu["server"], 1),
        "web_cpu_percent": r(cpu["web"], 1),
        "broker_max_rss_mib": r(rss["broker"] / MIB, 1),
        "server_max_rss_mib": r(rss["server"] / MIB, 1),
        "web_max_rss_mib": r(rss["web"] / MIB, 1),
        "robot_max_rss_mib": r(max(rss[rid] for rid in rids) / MIB, 1),
        "previews_at_broker": previews,
        "previews_at_browser": ws_got,
        "dropped_previews": max(0, previews - ws_got),
        "preview_rate_per_robot": r(previews / seconds / n),
        "seconds": r(seconds, 1),
    }


async def _run(args: argparse.Namespace, work: Path, prefix: str) -> dict[str, Any]:
    sizes = [1] if args.tiny else [int(v) for v in args.robots.split(",") if v]
    arch = "tiny" if args.tiny else "lraspp_mbv3_large"
    ckpt = bench_checkpoint(work, arch=arch)
    robot_flags = ["--source", "sim:rural", "--model", str(ckpt)]
    if args.tiny:
        robot_flags += ["--infer-size", "160x120", "--size", "320x240"]
    rows = []
    rids = [f"rover{i + 1}" for i in range(max(sizes))]
    async with (
        broker(args.broker, work, rids, prefix) as b,
        server_and_web(b, work, ckpt) as back,
    ):
        await wait_port(back.web_port, proc=back.web)
        base = {
            "broker": b.proc.process.pid,
            "server": back.server.process.pid,
            "web": back.web.process.pid,
        }
        pids = {k: v for k, v in base.items() if v is not None}
        for n in sizes:
            rows.append(await one_size(n, args, b, work, pids, back.ws_url, robot_flags))
    by_n = {str(row["robots"]): row for row in rows}
    fleet = [row["fleet_fps"] or 0.0 for row in rows]
    return {
        "broker": args.broker,
        "arch": arch,
        "model": ckpt.name,
        "cpu_cores": cpu_cores(),
        "per_n": by_n,
        "fleet_fps_by_n": dict(zip(by_n, fleet, strict=True)),
        "fleet_fps_median": r(median(fleet)),
    }


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if args.light:
        from ars.bench import fleet_light

        args.robots = args.robots or "10,50,200"
        return fleet_light.run(args, settings)
    args.robots = args.robots or "1,4,8"
    if args.tiny:
        args.seconds = min(args.seconds, 2.0)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="ars-bench-fleet-") as tmp:
        result = asyncio.run(_run(args, Path(tmp), settings.prefix))
    result["load_average"] = {"before": load_before, "after": load_average()}
    return result
