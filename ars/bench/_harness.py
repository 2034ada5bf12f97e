"""Shared pieces of the system benchmarks: processes started the way deployment starts them,
per-process CPU and RSS sampling, a broker of either kind, an observer MQTT client, and the
checkpoint the benches run (the shipped base model, or an untrained one of the same
architecture and speed while the base model does not exist yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.credentials import Credentials, ensure_credentials
from broker.embedded import free_port
from common.topics import Topics

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[rank])


def r(value: float | None, digits: int = 2) -> float | None:
    if value is None or value != value:  # NaN
        return None
    return round(value, digits)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def bench_checkpoint(work: Path, *, arch: str = "lraspp_mbv3_large", dtype: str = "fp16") -> Path:
    """The shipped base model when it exists and ``arch`` is its architecture; else an untrained
    ``arch`` model (same speed, no accuracy) written under ``work``."""
    from models.checkpoint import DEFAULT_CHECKPOINT

    if arch == "lraspp_mbv3_large" and dtype == "fp16" and DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    return untrained_checkpoint(work / f"untrained-{arch}-{dtype}.pt", arch=arch, dtype=dtype)


def untrained_checkpoint(
    path: Path, *, arch: str, dtype: str, version: str | None = None, seed: int = 0
) -> Path:
    import torch

    from models.checkpoint import save_checkpoint
    from models.network import build_model

    torch.manual_seed(seed)
    model = build_model(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        path,
        model,
        arch=arch,
        version=version or f"untrained-{arch}-{dtype}",
        metrics={},
        dtype="fp16" if dtype == "fp16" else "fp32",
    )
    return path


# --- processes ------------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    process: asyncio.subprocess.Process
    log: Path


async def spawn(
    name: str, argv: Sequence[str], logs: Path, env: dict[str, str] | None = None
) -> Proc:
    """``python -m ars.cli ARGV`` with output to ``logs/NAME.log``."""
    logs.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once at start-up)
    log = logs / f"{name}.log"
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "2")
    full_env.update(env or {})
    with open(log, "wb") as fh:  # noqa: ASYNC230 (opened once at start-up)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ars.cli", *argv, stdout=fh, stderr=fh, env=full_env
        )
    return Proc(name, process, log)


async def stop(procs: Sequence[Proc], timeout: float = 15.0) -> None:
    for p in reversed(procs):
        if p.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.process.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            await asyncio.wait_for(p.process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.process.kill()
            await p.process.wait()


async def wait_port(port: int, timeout: float = 30.0, proc: Proc | None = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc is not None and proc.process.returncode is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s")


@dataclass
class Broker:
    kind: str
    port: int
    creds: Credentials
    proc: Proc
    topics: Topics

    def url(self, user: str) -> str:
        return self.creds.url_for(user, HOST, self.port)

    def env(self, user: str) -> dict[str, str]:
        """Environment for an ``ars`` process that connects as ``user`` under the prefix."""
        return {"ARS_MQTT__URL": self.url(user), "ARS_PREFIX": self.topics.prefix}


def mosquitto_binary() -> str | None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return binary if os.path.exists(binary) and shutil.which("mosquitto_passwd") else None


@contextlib.asynccontextmanager
async def broker(
    kind: str, work: Path, robot_ids: Sequence[str], prefix: str = "ars"
) -> AsyncIterator[Broker]:
    """The embedded broker as ``ars broker`` (its own process), or a real Mosquitto; both with
    the ACL for topics under ``prefix`` (the configured one)."""
    creds = ensure_credentials(work / f"{kind}-creds", list(robot_ids))
    port = free_port()
    if kind == "amqtt":
        proc = await spawn(
            "broker",
            ["broker", "--data-dir", str(work / "broker"), "--port", str(port),
             "--password-file", str(creds.password_file), "--prefix", prefix],
            work / "logs",
        )  # fmt: skip
    else:
        from broker.mosquitto import write_mosquitto_config

        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        conf = write_mosquitto_config(
            work / "mosquitto", creds, list(robot_ids), port=port, prefix=prefix,
            max_packet_bytes=16 * 1024 * 1024, run_as="root" if os.geteuid() == 0 else None,
        )  # fmt: skip
        log = work / "logs" / "mosquitto.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as fh:  # noqa: ASYNC230
            process = await asyncio.create_subprocess_exec(
                binary, "-c", str(conf), stdout=fh, stderr=fh
            )
        proc = Proc("mosquitto", process, log)
    try:
        await wait_port(port, proc=proc)
        yield Broker(kind, port, creds, proc, Topics(prefix))
    finally:
        await stop([proc])


# --- CPU and memory -------------------------------------------------------------------------------
@dataclass
class Usage:
    cpu_samples: list[float] = field(default_factory=list)
    max_rss: int = 0


class Sampler:
    """Samples per-process CPU percent (of one core) and RSS, children included."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        import psutil

        self.interval = interval
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.usage = {name: Usage() for name in pids}
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0

    def _tree(self, name: str) -> list[Any]:
        p = self.procs[name]
        try:
            return [p, *p.children(recursive=True)]
        except Exception:
            return [p]

    def _cpu_total(self, name: str) -> float:
        total = 0.0
        for p in self._tree(name):
            with contextlib.suppress(Exception):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def _rss(self, name: str) -> int:
        total = 0
        for p in self._tree(name):
            with contextlib.suppress(Exception):
                total += p.memory_info().rss
        return total

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {name: self._cpu_total(name) for name in self.procs}

    def sample(self) -> None:
        for name in self.procs:
            u = self.usage[name]
            u.max_rss = max(u.max_rss, self._rss(name))

    async def run(self) -> None:
        last = {name: self._cpu_total(name) for name in self.procs}
        t_last = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            for name in self.procs:
                cpu = self._cpu_total(name)
                self.usage[name].cpu_samples.append(100.0 * (cpu - last[name]) / (now - t_last))
                last[name] = cpu
            t_last = now
            self.sample()

    def cpu_percent(self, name: str) -> float:
        """Mean CPU percent (100 = one core) since ``start``."""
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        return 100.0 * (self._cpu_total(name) - self._cpu0.get(name, 0.0)) / elapsed


@dataclass
class Observer:
    """Every message on ``topics`` (operator user), timestamped with ``perf_counter``."""

    topics: list[str]
    messages: list[tuple[float, str, bytes]] = field(default_factory=list)

    async def run(self, settings: Any, ready: asyncio.Event) -> None:
        from common.mqtt import make_client

        async with make_client(settings, client_id=f"bench-observer-{os.getpid()}") as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            ready.set()
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes | bytearray) else b""
                self.messages.append((time.perf_counter(), str(m.topic), bytes(payload)))

    async def wait(self, pred: Any, start: int = 0, timeout: float = 120.0) -> tuple[int, Any]:
        """(index, (time, pred's answer)) of the first message from ``start`` where ``pred``
        answers something other than None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        i = start
        while loop.time() < deadline:
            while i < len(self.messages):
                t, topic, payload = self.messages[i]
                found = pred(topic, payload)
                if found is not None:
                    return i, (t, found)
                i += 1
            await asyncio.sleep(0.005)
        raise TimeoutError(f"observer: expected message never came within {timeout:.0f} s")


def json_obj(payload: bytes) -> dict[str, Any] | None:
    import json

    with contextlib.suppress(ValueError, UnicodeDecodeError):
        data = json.loads(payload)
        return data if isinstance(data, dict) else None
    return None


def online(suffix: str) -> Any:
    """An observer predicate: the retained state on a topic ending in `suffix`, once online."""

    def pred(topic: str, payload: bytes) -> Any:
        d = json_obj(payload) if topic.endswith(suffix) else None
        return d if d and d.get("online") else None

    return pred


@dataclass
class Backend:
    """An ``ars server`` and ``ars web`` on a bench broker, as deployed (the fleet benches)."""

    server: Proc
    web: Proc
    web_port: int

    @property
    def ws_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/ws"


@contextlib.asynccontextmanager
async def server_and_web(b: Broker, work: Path, checkpoint: Path) -> AsyncIterator[Backend]:
    """Start both processes (not waiting for them to be ready); stop them on exit."""
    web_port = free_port()
    server = await spawn(
        "server", ["server", "--data-dir", str(work / "server"), "--base-model", str(checkpoint)],
        work / "logs", env=b.env("server"),
    )  # fmt: skip
    web = await spawn(
        "web", ["web", "--data-dir", str(work / "web"), "--port", str(web_port)],
        work / "logs", env=b.env("operator"),
    )  # fmt: skip
    try:
        yield Backend(server, web, web_port)
    finally:
        await stop([web, server])
