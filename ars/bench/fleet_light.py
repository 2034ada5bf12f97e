"""``ars bench fleet --light``: the server-side knee, with light robots instead of real ones.

The broker (``ars broker`` or Mosquitto), ``ars server`` and ``ars web`` run as deployed; N
light robots (``ars.bench.light_robot``: a real robot's previews, retained states and region
transfers at its rates, from a recording the robot's own code made once, no model) run in a
few host processes, at most ``--per-host`` each. For each N, after a warm-up, over
``--seconds``:

- regions stored per second: rows the server's store received in the window (its SQLite);
- ack latency: a transfer's first region published to the server's ``RegionsAck`` received, at
  the light robot (transfers started in the window);
- lost regions, by region id, after the hosts stop and the server has drained: published
  ones the server did not store, less the ones their robot still holds unsent (pending: a
  robot keeps an unacknowledged region and sends it again with its next transfer) or evicted
  unacknowledged from its bounded candidate store (0 lost expected; rejected ones apart);
- web preview latency: one WebSocket client of ``ars web`` watching one robot (``select``),
  arrival time minus the preview header's ``ts`` (one machine, one clock), for the previews
  sent in the window;
- CPU (100 = one core) and peak RSS of broker, server, web and the light-robot hosts.

A size fails (and no larger one runs) when regions are lost or refused, a transfer goes
unacknowledged, the server stores less than 90 % of what was offered, or the robots cannot
all connect; ``why`` says which (``--keep-going`` runs the larger sizes all the same).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ars.bench._harness import (
    Broker,
    Proc,
    Sampler,
    bench_checkpoint,
    broker,
    cpu_cores,
    load_average,
    percentile,
    r,
    server_and_web,
    stop,
    wait_port,
)
from ars.bench.light_robot import Rates
from common.config import RobotSettings, Settings
from common.files import write_atomic

MIB = 1024 * 1024
#: The share of the offered regions the server must store in the window to carry a size.
KEEPS_UP = 0.9
WATCHED = "rover1"


class PreviewWatcher:
    """A browser of ``ars web`` watching one robot's previews: latency of each (ms)."""

    def __init__(self, url: str, rid: str) -> None:
        self.url = url
        self.rid = rid
        self.arrivals: list[tuple[float, float]] = []  # (header ts: sent, latency ms)
        self.ready = asyncio.Event()

    async def run(self) -> None:
        import aiohttp

        from common.envelope import MAGIC, decode

        async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
            await ws.send_str(json.dumps({"type": "select", "robot_id": self.rid}))
            self.ready.set()
            async for msg in ws:
                arrived = time.time()
                if msg.type == aiohttp.WSMsgType.BINARY and bytes(msg.data[:4]) == MAGIC:
                    header = decode(msg.data).header
                    if header.get("type") == "preview" and header.get("robot_id") == self.rid:
                        sent = float(header["ts"])
                        self.arrivals.append((sent, (arrived - sent) * 1e3))


def _read_only(db: Path) -> contextlib.closing[sqlite3.Connection]:
    """The server's store, opened read-only beside the running server."""
    return contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True))


def server_regions(db: Path, since: float = 0.0, until: float = math.inf) -> int:
    """Regions the server's store received in [since, until] (wall clock)."""
    with _read_only(db) as con:
        (n,) = con.execute(
            "SELECT COUNT(*) FROM regions WHERE received >= ? AND received <= ?",
            (since, until if math.isfinite(until) else 1e18),
        ).fetchone()
    return int(n)


def server_region_ids(db: Path) -> set[str]:
    """Every region id in the server's store."""
    with _read_only(db) as con:
        return {str(rid) for (rid,) in con.execute("SELECT region_id FROM regions")}


async def start_hosts(
    rids: Sequence[str], b: Broker, work: Path, recording: Path, args: argparse.Namespace
) -> list[tuple[Proc, Path, Path]]:
    """Host processes of at most ``--per-host`` light robots each: (proc, stats, ready)."""
    hosts = []
    for h in range(math.ceil(len(rids) / args.per_host)):
        part = rids[h * args.per_host : (h + 1) * args.per_host]
        robots = work / f"robots-{h}.json"  # the robots' broker passwords: owner only
        write_atomic(robots, json.dumps({rid: b.url(f"robot-{rid}") for rid in part}).encode(),
                     mode=0o600, durable=False)  # fmt: skip
        stats, ready = work / f"stats-{h}.json", work / f"ready-{h}"
        log = work / "logs" / f"light-{len(rids)}-{h}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as fh:  # noqa: ASYNC230 (opened once at start-up)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ars.bench.light_robot", "--robots", str(robots),
                "--recording", str(recording), "--prefix", b.topics.prefix,
                "--transfer-every", str(args.transfer_every), "--stats", str(stats),
                "--ready", str(ready), stdout=fh, stderr=fh,
            )  # fmt: skip
        hosts.append((Proc(f"light{h}", proc, log), stats, ready))
    return hosts


async def wait_ready(hosts: list[tuple[Proc, Path, Path]], timeout: float) -> str | None:
    """None once every host has all its robots connected; else why not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for proc, _, _ in hosts:
            if proc.process.returncode is not None:
                return f"{proc.name} exited: {proc.log.read_text()[-1500:]}"
        if all(ready.exists() for _, _, ready in hosts):
            return None
        await asyncio.sleep(0.2)
    return f"the light robots did not all connect within {timeout:.0f} s"


async def one_size(
    n: int, args: argparse.Namespace, b: Broker, work: Path, base: dict[str, int],
    ws_url: str, recording: Path, db: Path,
) -> dict[str, Any]:  # fmt: skip
    rids = [f"rover{i + 1}" for i in range(n)]
    row: dict[str, Any] = {"robots": n}
    watcher = PreviewWatcher(ws_url, WATCHED)
    ws_task = asyncio.create_task(watcher.run())
    hosts = await start_hosts(rids, b, work / f"n{n}", recording, args)
    sample_task: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(watcher.ready.wait(), 15)
        why = await wait_ready(hosts, timeout=max(60.0, n * 1.0))
        if why is not None:
            return {**row, "ok": False, "why": why}
        await asyncio.sleep(args.warmup)
        pids = dict(base)
        pids.update({p.name: p.process.pid for p, _, _ in hosts if p.process.pid})
        sampler = Sampler(pids, interval=1.0)
        sampler.start()
        sample_task = asyncio.create_task(sampler.run())
        t0 = time.time()
        await asyncio.sleep(args.seconds)
        t1 = time.time()
        cpu = {name: sampler.cpu_percent(name) for name in pids}
        sampler.sample()
    finally:
        if sample_task is not None:
            sample_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sample_task
        await stop([p for p, _, _ in hosts], timeout=60.0)
        ws_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ws_task
    logs: dict[str, Any] = {}
    for proc, stats, _ in hosts:
        if not stats.exists():
            return {**row, "ok": False, "why": f"{proc.name} wrote no stats: "
                    f"{proc.log.read_text()[-1500:]}"}  # fmt: skip
        logs.update(json.loads(stats.read_text(encoding="utf-8")))
    transfers = [t for log in logs.values() for t in log["transfers"]]
    unacked = [t for t in transfers if t["seconds"] is None]
    acked_stored = sum(t["stored"] for t in transfers)
    rejected = sum(t["rejected"] for t in transfers)
    # by region id: a robot keeps an unacknowledged region and sends it again (pending)
    published = {rid for log in logs.values() for rid in log["published"]}
    pending = {rid for log in logs.values() for rid in log["pending"]}
    evicted = {rid for log in logs.values() for rid in log["evicted"]}
    stored_ids = await drained(db, published - pending - evicted)
    seconds = t1 - t0
    in_window = [t for t in transfers if t0 <= t["start"] <= t1]
    ack_ms = [t["seconds"] * 1e3 for t in in_window if t["seconds"] is not None]
    offered = sum(t["selected"] for t in in_window)
    stored_window = server_regions(db, t0, t1)
    previews = [lat for sent_at, lat in watcher.arrivals if t0 <= sent_at <= t1]
    watched_sent = sum(1 for at in logs.get(WATCHED, {}).get("previews", []) if t0 <= at <= t1)
    all_previews = sum(1 for log in logs.values() for at in log["previews"] if t0 <= at <= t1)
    rss = {name: sampler.usage[name].max_rss for name in pids}
    light = [name for name in pids if name.startswith("light")]
    row.update({
        "regions_offered_per_s": r(offered / seconds),
        "regions_stored_per_s": r(stored_window / seconds),
        "transfers": len(in_window),
        "ack_ms_p50": r(percentile(ack_ms, 50), 1),
        "ack_ms_p99": r(percentile(ack_ms, 99), 1),
        "ack_ms_max": r(max(ack_ms), 1) if ack_ms else None,
        "unacked_transfers": len(unacked),
        "regions_sent": len(published),
        "regions_acked_stored": acked_stored,
        "regions_stored": len(published & stored_ids),
        "regions_pending": len(pending - stored_ids),
        "regions_evicted": len(evicted - stored_ids),
        "lost_regions": len(published - stored_ids - pending - evicted),
        "rejected_regions": rejected,
        "previews_per_s": r(all_previews / seconds, 1),
        "watched_previews_sent": watched_sent,
        "watched_previews_at_browser": len(previews),
        "web_preview_ms_p50": r(percentile(previews, 50), 1),
        "web_preview_ms_p99": r(percentile(previews, 99), 1),
        "broker_cpu_percent": r(cpu["broker"], 1),
        "server_cpu_percent": r(cpu["server"], 1),
        "web_cpu_percent": r(cpu["web"], 1),
        "light_hosts": len(light),
        "light_cpu_percent": r(sum(cpu[name] for name in light), 1),
        "broker_max_rss_mib": r(rss["broker"] / MIB, 1),
        "server_max_rss_mib": r(rss["server"] / MIB, 1),
        "web_max_rss_mib": r(rss["web"] / MIB, 1),
        "light_max_rss_mib": r(sum(rss[name] for name in light) / MIB, 1),
        "load_average": load_average(),
        "seconds": r(seconds, 1),
    })  # fmt: skip
    row["ok"], row["why"] = verdict(row)
    return row


async def drained(db: Path, expected: set[str], timeout: float = 300.0) -> set[str]:
    """The stored region ids, once ``expected`` are all stored or the count stops growing
    (10 s): a server behind its robots works through the broker's queue first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, still_since = -1, loop.time()
    while True:
        stored = server_region_ids(db)
        if expected <= stored or loop.time() >= deadline:
            return stored
        if len(stored) != last:
            last, still_since = len(stored), loop.time()
        elif loop.time() - still_since > 10.0:
            return stored
        await asyncio.sleep(0.5)


def verdict(row: dict[str, Any]) -> tuple[bool, str]:
    why = []
    if row["lost_regions"]:
        why.append(f"{row['lost_regions']} regions lost")
    if row["rejected_regions"]:
        why.append(f"{row['rejected_regions']} regions rejected")
    if row["unacked_transfers"]:
        why.append(f"{row['unacked_transfers']} transfers without an ack in 15 s")
    offered, stored = row["regions_offered_per_s"] or 0.0, row["regions_stored_per_s"] or 0.0
    if stored < KEEPS_UP * offered:
        why.append(f"stored {stored}/s of {offered}/s offered")
    return not why, "; ".join(why)


async def _run(args: argparse.Namespace, work: Path, prefix: str) -> dict[str, Any]:
    from ars.bench.recording import record

    sizes = [int(v) for v in args.robots.split(",") if v]
    arch = "tiny" if args.tiny else "lraspp_mbv3_large"
    ckpt = bench_checkpoint(work, arch=arch)
    rows: list[dict[str, Any]] = []
    rids = [f"rover{i + 1}" for i in range(max(sizes))]
    bar = progress(args, len(sizes))
    async with (
        broker(args.broker, work, rids, prefix) as b,
        server_and_web(b, work, ckpt) as back,
    ):
        try:
            # recorded while the server and the web app start (both take seconds to import)
            frames = 2 if args.tiny else 6
            rec = await asyncio.to_thread(record, work / "recording", ckpt, frames=frames)
            await wait_port(back.web_port, proc=back.web)
            db = work / "server" / "server.sqlite3"
            await wait_store(db, back.server)
            base = {"broker": b.proc.process.pid, "server": back.server.process.pid,
                    "web": back.web.process.pid}  # fmt: skip
            pids = {k: v for k, v in base.items() if v is not None}
            for n in sizes:
                row = await one_size(n, args, b, work, pids, back.ws_url,
                                     work / "recording", db)  # fmt: skip
                rows.append(row)
                bar.update(1)
                bar.set_postfix_str(summary(row))
                if not row["ok"] and not args.keep_going:
                    break
        finally:
            bar.close()
    rates = Rates.of(RobotSettings(), args.transfer_every)
    carried = [row["robots"] for row in rows if row["ok"]]
    return {
        "kind": "light",
        "broker": args.broker,
        "cpu_cores": cpu_cores(),
        "rates_per_robot": {
            "previews_per_s": rates.preview_fps,
            "states_per_s": 1.0 / rates.state_interval_s,
            "regions_per_s": r(rates.regions_per_s),
            "transfer_every_s": rates.transfer_every_s,
            "regions_per_transfer": rates.regions_per_transfer if rates.regions_per_s else 0,
        },
        "preview_bytes": rec.preview_bytes,
        "region_bytes": rec.region_bytes,
        "recorded_with": ckpt.name,
        "per_n": {str(row["robots"]): row for row in rows},
        "largest_n_carried": max(carried) if carried else 0,
        "sizes_not_run": [n for n in sizes if str(n) not in {str(x["robots"]) for x in rows}],
    }


def summary(row: dict[str, Any]) -> str:
    if "regions_stored_per_s" not in row:
        return f"N={row['robots']} failed: {row['why']}"
    return (
        f"N={row['robots']} stored {row['regions_stored_per_s']}/s ack p99 "
        f"{row['ack_ms_p99']} ms lost {row['lost_regions']} web p99 {row['web_preview_ms_p99']} ms"
    )


def progress(args: argparse.Namespace, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="fleet sizes", unit="N", disable=args.json, file=sys.stderr)


async def wait_store(db: Path, proc: Proc, timeout: float = 60.0) -> None:
    """Until the server's store answers (the file appears before its tables)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with contextlib.suppress(sqlite3.Error):
            server_regions(db)
            return
        if proc.process.returncode is not None or loop.time() > deadline:
            tail = proc.log.read_text()[-1500:]
            raise RuntimeError(f"{proc.name}: no store at {db}: {tail}")
        await asyncio.sleep(0.2)


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if args.tiny:
        args.robots, args.seconds, args.warmup = "3", min(args.seconds, 3.0), 1.0
        args.transfer_every = min(args.transfer_every, 1.0) if args.transfer_every > 0 else 0.0
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="ars-bench-fleet-light-") as tmp:
        os.chmod(tmp, 0o700)
        result = asyncio.run(_run(args, Path(tmp), settings.prefix))
    result["load_average"] = {"before": load_before, "after": load_average()}
    return result
