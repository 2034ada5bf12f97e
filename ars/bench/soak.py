"""``ars bench soak --json --minutes M``: N simulated robots running the whole loop repeatedly.

Every part is its own process as deployed (``ars broker``, ``ars server``, ``ars web``, N x
``ars robot --source sim:drive``, the tiny network at 128x96). Each robot's loop: Start
Segmentation, ``--frames`` frames, Stop, Transfer Data, annotation by the oracle (one session at
a time), Start FineTune (``--iterations``), Transfer Model (forced past the gate: the figures
here are about staying up, not accuracy), until the robot runs the new version. Loops repeat
until the time is up.

Figures: ``loops_completed``; ``errors`` (error-level events from any agent, failed or rejected
answers, and loop steps that timed out); ``rss_growth_mb`` per process (median RSS of the last
three samples minus the median of the first three after warm-up); ``lost_items``: regions the
robots say the server stored but the server's registry lacks, plus annotations the oracle saved
that the registry lacks (read from its SQLite after the run), which must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ars.bench._harness import (
    Observer,
    Proc,
    broker,
    cpu_cores,
    load_average,
    r,
    spawn,
    stop,
    untrained_checkpoint,
    wait_port,
)
from broker.embedded import free_port
from common.config import MqttSettings, Settings
from common.topics import Topics

MIB = 1024 * 1024
TIMEOUT_S = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the robots loop")
    parser.add_argument("--robots", type=int, default=4, help="simulated robots")
    parser.add_argument("--frames", type=int, default=20, help="frames segmented per loop")
    parser.add_argument("--iterations", type=int, default=5, help="fine-tune iterations per loop")
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="seconds before RSS growth is measured (default: min(300, 25%%))",
    )
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")


class Soak:
    """The operator of the soak: commands, answers, the oracle, the figures."""

    def __init__(self, args: argparse.Namespace, operator: MqttSettings, topics: Topics) -> None:
        from common.mqtt import MqttLink

        self.args = args
        self.topics = topics
        self.obs = Observer(
            [topics.all_robots("events"), topics.all_robots("state"), topics.server_events]
        )
        self.link = MqttLink(operator, client_id=f"soak-operator-{time.monotonic_ns() % 10**8}")
        self.operator = operator
        self.annotation = asyncio.Lock()
        self.loops: Counter[str] = Counter()
        self.step_errors: list[str] = []
        self.regions_sent: Counter[str] = Counter()
        self.labeled: Counter[str] = Counter()

    async def send(self, rid: str, cmd: str, **args: Any) -> str:
        from common.schemas import Command

        command = Command(cmd=cmd, args=args)
        await self.link.publish(self.topics.robot_cmd(rid), command.to_json(), qos=1)
        return command.id

    async def answer(self, ref: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        def final(topic: str, payload: bytes) -> dict[str, Any] | None:
            if not topic.endswith("/events"):
                return None
            with contextlib.suppress(ValueError):
                ev = json.loads(payload)
                if ev.get("ref") == ref and ev.get("kind") in ("done", "failed", "rejected"):
                    return dict(ev)
            return None

        _, (_, ev) = await self.obs.wait(final, 0, timeout)
        return dict(ev)

    async def run_cmd(self, rid: str, cmd: str, timeout: float = TIMEOUT_S, **args: Any
                      ) -> dict[str, Any]:  # fmt: skip
        ev = await self.answer(await self.send(rid, cmd, **args), timeout)
        if ev["kind"] != "done":
            raise RuntimeError(f"{rid} {cmd}: {ev['kind']}: {ev.get('msg')}")
        return ev

    def state(self, rid: str) -> dict[str, Any]:
        for _, topic, payload in reversed(self.obs.messages):
            if topic == self.topics.robot_state(rid) and payload:
                with contextlib.suppress(ValueError):
                    return dict(json.loads(payload))
        return {}

    def model_version(self, rid: str) -> str | None:
        model = self.state(rid).get("model") or {}
        return model.get("version") if isinstance(model, dict) else None

    async def until(self, check: Any, timeout: float = TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout):
            while not check():  # noqa: ASYNC110 (reads the observer's list)
                await asyncio.sleep(0.2)

    async def label(self, rid: str) -> int:
        from ars.commands.annotate import Requester, label_all
        from common.mqtt import MqttLink

        topics = self.topics
        client_id = f"soak-oracle-{rid}"
        reply = topics.server_reply(client_id)
        async with MqttLink(self.operator, client_id=client_id,
                            subscriptions=[(reply, 1)]) as link:  # fmt: skip
            await link.wait_connected(30)
            req = Requester(link, topics, reply, 60.0)
            header, _ = await req.call("list_regions", {"robot_id": rid})
            todo = [e for e in header["data"]["regions"]
                    if not e["annotated"] and not e["skipped"]]  # fmt: skip
            counts = await label_all(req, todo, progress=False)
        self.step_errors += counts["errors"]
        return int(counts["labeled"])

    async def loop(self, rid: str, end: float) -> None:
        """One robot's loops until ``end`` (monotonic); a failed step is counted, then retried."""
        while time.monotonic() < end:
            step = "start"
            try:
                frames0 = int(self.state(rid).get("frames", 0))
                await self.run_cmd(rid, "start_segmentation", 60)
                step = "segment"
                await self.until(lambda frames0=frames0: int(self.state(rid).get("frames", 0))
                                 >= frames0 + self.args.frames, 300)  # fmt: skip
                await self.run_cmd(rid, "stop_segmentation", 60)
                step = "transfer_data"
                sent = await self.run_cmd(rid, "transfer_data", 120)
                self.regions_sent[rid] += int(sent["data"]["regions"])
                step = "annotate"
                async with self.annotation:
                    await self.run_cmd(rid, "start_annotation", 60)
                    self.labeled[rid] += await self.label(rid)
                    await self.run_cmd(rid, "stop_annotation", 60)
                step = "finetune"
                tuned = await self.run_cmd(rid, "start_finetune", TIMEOUT_S,
                                           iterations=self.args.iterations)  # fmt: skip
                version = tuned["data"]["version"]
                step = "transfer_model"
                await self.run_cmd(rid, "transfer_model", 300, force=True)
                await self.until(lambda v=version: self.model_version(rid) == v, 120)
                self.loops[rid] += 1
            except (RuntimeError, TimeoutError) as exc:
                self.step_errors.append(f"{rid} {step}: {exc}")
                await asyncio.sleep(2.0)

    def error_events(self) -> int:
        n = 0
        for _, topic, payload in self.obs.messages:
            if topic.endswith("/events"):
                with contextlib.suppress(ValueError):
                    ev = json.loads(payload)
                    if ev.get("level") == "error" or ev.get("kind") in ("failed", "rejected"):
                        n += 1
        return n


class RssSampler:
    """RSS of each process (with its children) every ``period`` seconds."""

    def __init__(self, pids: dict[str, int], period: float) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.period = period
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}

    def sample(self) -> None:
        now = time.monotonic()
        for name, p in self.procs.items():
            total = 0
            with contextlib.suppress(Exception):
                for q in [p, *p.children(recursive=True)]:
                    with contextlib.suppress(Exception):
                        total += q.memory_info().rss
            if total:
                self.samples[name].append((now, total))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.period)

    def growth_mb(self, after: float) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, series in self.samples.items():
            late = [rss for t, rss in series if t >= after]
            if len(late) < 4:
                out[name] = None
                continue
            first = statistics.median(late[:3])
            last = statistics.median(late[-3:])
            out[name] = r((last - first) / MIB, 1)
        return out

    def timeline_mb(self, start: float, step: float = 60.0) -> dict[str, list[float | None]]:
        """RSS of each process at ``start`` and every ``step`` seconds after (MiB)."""
        out: dict[str, list[float | None]] = {}
        for name, series in self.samples.items():
            points: list[float | None] = []
            t = start
            while series and t <= series[-1][0] + 1e-6:
                nearest = min(range(len(series)), key=lambda i: abs(series[i][0] - t))
                points.append(r(series[nearest][1] / MIB, 1))
                t += step
            out[name] = points
        return out

    def peak_mb(self) -> dict[str, float | None]:
        return {n: r(max((v for _, v in s), default=0) / MIB, 1) for n, s in self.samples.items()}


def registry_counts(db: Path) -> tuple[Counter[str], Counter[str]]:
    """(regions per robot, labeled annotations per robot) from the server's SQLite."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        regions = Counter({str(k): int(v) for k, v in conn.execute(
            "SELECT robot_id, COUNT(*) FROM regions GROUP BY robot_id")})  # fmt: skip
        labeled = Counter(
            {
                str(k): int(v)
                for k, v in conn.execute(
                    "SELECT r.robot_id, COUNT(*) FROM annotations a JOIN regions r "
                    "ON a.region_id = r.region_id WHERE a.state = 'labeled' GROUP BY r.robot_id"
                )
            }
        )
    finally:
        conn.close()
    return regions, labeled


async def _run(args: argparse.Namespace, work: Path, prefix: str) -> dict[str, Any]:
    rids = [f"rover{i + 1}" for i in range(args.robots)]
    ckpt = untrained_checkpoint(work / "tiny.pt", arch="tiny", dtype="fp32", version="base")
    seconds = args.minutes * 60.0
    warmup = args.warmup_s if args.warmup_s is not None else min(300.0, 0.25 * seconds)
    server_env = {"ARS_SERVER__TRAIN_WIDTH": "128", "ARS_SERVER__TRAIN_HEIGHT": "96",
                  "ARS_SERVER__BATCH_SIZE": "2", "ARS_SERVER__CHUNK_SIZE": "16384"}  # fmt: skip
    procs: list[Proc] = []
    async with broker("amqtt", work, rids, prefix) as b:
        try:
            web_port = free_port()
            server = await spawn("server", [
                "server", "--data-dir", str(work / "server"), "--base-model", str(ckpt),
                "--iterations", str(args.iterations), "--threads", "1", "--eval-frames", "2",
                "--replay-frames", "4"], work / "logs",
                env={**b.env("server"), **server_env})  # fmt: skip
            web = await spawn("web", ["web", "--data-dir", str(work / "web"), "--port",
                                      str(web_port)], work / "logs",
                              env=b.env("operator"))  # fmt: skip
            procs += [server, web]
            for i, rid in enumerate(rids):
                procs.append(await spawn(rid, [
                    "robot", "--data-dir", str(work / rid), "--id", rid, "--source", "sim:drive",
                    "--switch-at", "0", "--seed", str(i), "--model", str(ckpt),
                    "--size", "160x120", "--infer-size", "128x96", "--camera-fps", "5",
                    "--preview-fps", "1", "--threads", "1", "--device", "cpu"], work / "logs",
                    env=b.env(f"robot-{rid}")))  # fmt: skip
            await wait_port(web_port, proc=web)
            soak = Soak(args, MqttSettings(url=b.url("operator")), b.topics)
            ready = asyncio.Event()
            obs_task = asyncio.create_task(soak.obs.run(soak.operator, ready))
            async with soak.link:
                await soak.link.wait_connected(30)
                await asyncio.wait_for(ready.wait(), 30)
                await soak.until(lambda: all(soak.state(rid).get("online") for rid in rids), 300)
                pids = {"broker": b.proc.process.pid, "server": server.process.pid,
                        "web": web.process.pid}  # fmt: skip
                pids.update({p.name: p.process.pid for p in procs if p.name in rids})
                sampler = RssSampler(pids, args.sample_s)
                sample_task = asyncio.create_task(sampler.run())
                t0 = time.monotonic()
                await asyncio.gather(*(soak.loop(rid, t0 + seconds) for rid in rids))
                elapsed = time.monotonic() - t0
                sampler.sample()
                sample_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sample_task
                events_errors = soak.error_events()
            obs_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await obs_task
        finally:
            await stop(procs)
    regions, labeled = registry_counts(work / "server" / "server.sqlite3")
    lost_regions = sum(max(0, soak.regions_sent[rid] - regions[rid]) for rid in rids)
    lost_labels = sum(max(0, soak.labeled[rid] - labeled[rid]) for rid in rids)
    return {
        "robots": args.robots,
        "minutes": r(elapsed / 60.0, 2),
        "warmup_s": r(warmup, 0),
        "loops_completed": sum(soak.loops.values()),
        "loops_per_robot": dict(soak.loops),
        "errors": len(soak.step_errors) + events_errors,
        "error_events": events_errors,
        "step_errors": soak.step_errors[:20],
        "regions_stored": sum(regions.values()),
        "annotations_stored": sum(labeled.values()),
        "lost_items": lost_regions + lost_labels,
        "rss_growth_mb": sampler.growth_mb(t0 + warmup),
        "rss_peak_mb": sampler.peak_mb(),
        "rss_mb_per_minute": sampler.timeline_mb(t0),
        "cpu_cores": cpu_cores(),
    }


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="ars-bench-soak-") as tmp:
        result = asyncio.run(_run(args, Path(tmp), settings.prefix))
    result["load_average"] = {"before": load_before, "after": load_average()}
    return result
