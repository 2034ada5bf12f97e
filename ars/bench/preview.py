"""``ars bench preview``: robot previews to a browser's WebSocket through the broker and web app.

The broker (``ars broker``) and the web app (``ars web``) run as their own processes. This
process publishes previews as the robot does (user ``robot-rover1``, QoS0, one envelope
[JPEG 320x240, PNG class mask] with the header's ``ts`` set at publish time) at 10 and 30 per
second, and reads them on WebSocket clients of the web app; latency is the WebSocket arrival time
minus the header's ``ts`` (one machine, one clock). The slow-client case adds a second client
that reads one message per second and compares the fast client's p99 with the run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ars.bench._harness import (
    Sampler,
    broker,
    load_average,
    percentile,
    r,
    spawn,
    stop,
    wait_port,
)
from broker.embedded import free_port
from common.config import MqttSettings, Settings

RID = "rover1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per case")
    parser.add_argument("--rates", default="10,30", help="previews per second")
    parser.add_argument("--tiny", action="store_true", help="smoke setting: 2 s per case")


def preview_parts() -> tuple[bytes, bytes]:
    """A real frame's JPEG and a class mask's PNG at the robot's default preview size."""
    from common.images import encode_jpeg, encode_png
    from simulator.scene import render_frame

    frame = render_frame("rural", 3, width=320, height=240)
    return encode_jpeg(frame.image, 80), encode_png(frame.label)


class WsClient:
    """Reads the web app's socket; records each preview's latency (ms)."""

    def __init__(self, url: str, *, read_interval: float = 0.0) -> None:
        self.url = url
        self.read_interval = read_interval
        self.latencies: list[float] = []
        self.counting = False
        self.ready = asyncio.Event()

    async def run(self) -> None:
        import aiohttp

        from common.envelope import decode

        async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
            self.ready.set()
            while True:
                msg = await ws.receive()
                arrived = time.time()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    env = decode(msg.data)
                    if env.header.get("type") == "preview" and self.counting:
                        self.latencies.append((arrived - float(env.header["ts"])) * 1000.0)
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return
                if self.read_interval:
                    await asyncio.sleep(self.read_interval)


async def publish_previews(
    url: str, topic: str, rate: float, seconds: float, parts: tuple[bytes, bytes]
) -> int:
    from common.envelope import encode
    from common.mqtt import make_client
    from common.schemas import PreviewHeader

    sent = 0
    async with make_client(MqttSettings(url=url), client_id=f"bench-robot-{os.getpid()}") as c:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < seconds:
            header = PreviewHeader(
                robot_id=RID, frame_id=f"bench-i{sent}", model_version="bench",
                infer_ms=40.0, width=320, height=240, fps=rate,
            )  # fmt: skip
            await c.publish(topic, encode(header.model_dump(mode="json"), list(parts)), qos=0)
            sent += 1
            next_t = start + sent / rate
            await asyncio.sleep(max(0.0, next_t - loop.time()))
    return sent


async def case(
    ws_url: str,
    robot_url: str,
    topic: str,
    rate: float,
    seconds: float,
    parts: tuple[bytes, bytes],
    sampler: Sampler,
    slow: bool,
) -> dict[str, Any]:
    fast = WsClient(ws_url)
    clients = [fast] + ([WsClient(ws_url, read_interval=1.0)] if slow else [])
    tasks = [asyncio.create_task(c.run()) for c in clients]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in clients)), 10)
        await asyncio.sleep(0.5)
        fast.counting = True
        sampler.start()
        sent = await publish_previews(robot_url, topic, rate, seconds, parts)
        web_cpu = sampler.cpu_percent("web")
        broker_cpu = sampler.cpu_percent("broker")
        await asyncio.sleep(0.5)
        fast.counting = False
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    lat = fast.latencies
    return {
        "rate": rate,
        "slow_client": slow,
        "sent": sent,
        "latency_ms_p50": r(percentile(lat, 50)),
        "latency_ms_p99": r(percentile(lat, 99)),
        "latency_ms_max": r(max(lat) if lat else float("nan")),
        "delivered_ratio": r(len(lat) / sent if sent else 0.0, 4),
        "web_cpu_percent": r(web_cpu, 1),
        "broker_cpu_percent": r(broker_cpu, 1),
    }


async def _run(args: argparse.Namespace, work: Path, prefix: str) -> dict[str, Any]:
    rates = [float(v) for v in args.rates.split(",") if v]
    parts = preview_parts()
    out: dict[str, Any] = {
        "preview_bytes": sum(len(p) for p in parts),
        "broker": "amqtt",
    }
    async with broker("amqtt", work, [RID], prefix) as b:
        port = free_port()
        web = await spawn(
            "web", ["web", "--data-dir", str(work / "web"), "--port", str(port)], work / "logs",
            env=b.env("operator"),
        )  # fmt: skip
        try:
            await wait_port(port, proc=web)
            await asyncio.sleep(1.0)  # the web app's MQTT link
            assert web.process.pid is not None and b.proc.process.pid is not None
            sampler = Sampler({"web": web.process.pid, "broker": b.proc.process.pid})
            ws_url = f"http://127.0.0.1:{port}/ws"
            robot_url = b.url(f"robot-{RID}")
            topic = b.topics.robot_preview(RID)
            cases = []
            for rate in rates:
                cases.append(
                    await case(ws_url, robot_url, topic, rate, args.seconds, parts, sampler, False)
                )
            cases.append(
                await case(ws_url, robot_url, topic, rates[0], args.seconds, parts, sampler, True)
            )
        finally:
            await stop([web])
    by_rate = {f"{c['rate']:g}_per_s": c for c in cases if not c["slow_client"]}
    slow = next(c for c in cases if c["slow_client"])
    base = by_rate[f"{rates[0]:g}_per_s"]
    out.update(by_rate)
    out[f"{rates[0]:g}_per_s_with_slow_client"] = slow
    out.update(
        {
            "latency_ms_p50": base["latency_ms_p50"],
            "latency_ms_p99": base["latency_ms_p99"],
            "delivered_ratio": base["delivered_ratio"],
            "web_cpu_percent": base["web_cpu_percent"],
            "slow_client_p99_increase_ms": r(
                (slow["latency_ms_p99"] or 0.0) - (base["latency_ms_p99"] or 0.0)
            ),
        }
    )
    return out


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if args.tiny:
        args.seconds = min(args.seconds, 2.0)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="ars-bench-preview-") as tmp:
        result = asyncio.run(_run(args, Path(tmp), settings.prefix))
    p99 = result["latency_ms_p99"]
    result["targets"] = {
        "p99_at_most_50ms_at_10_per_s": bool(p99 is not None and p99 <= 50.0),
        "slow_client_adds_at_most_10ms": bool(
            result["slow_client_p99_increase_ms"] is not None
            and result["slow_client_p99_increase_ms"] <= 10.0
        ),
    }
    result["load_average"] = {"before": load_before, "after": load_average()}
    return result
