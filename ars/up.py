"""``ars up``: the whole system on one machine, each part its own process.

Starts the embedded broker, the server agent, the web UI and one simulated robot
(``sim:drive``: urban, then rural), with credentials generated on first run (mode 0600) and
passed to each child through its environment, never its command line. Ctrl-C (or SIGTERM) stops
every child cleanly; if one child dies, the others are stopped too and the exit code says so.

Each child runs in its own process group, so a terminal's Ctrl-C reaches ``ars up`` alone and
the shutdown order is ours: the agents first (they say goodbye to a live broker), the broker
last, one line each. Start-up waits for the broker by seeing its port taken, never by
connecting to it: a bare TCP probe makes amqtt log an error ("No data from ...") on every start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

from broker.credentials import ensure_credentials
from common.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=None, help="broker port (default 1883)")
    parser.add_argument("--web-port", type=int, default=None, help="web UI port (default 8080)")
    parser.add_argument("--source", default=None, help="robot camera source (default sim:drive)")
    parser.add_argument("--robot-id", default=None, help="robot id (default rover1)")
    parser.add_argument("--no-web", action="store_true", help="headless: no web UI")


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"broker": {}, "web": {}, "robot": {}}
    if args.port is not None:
        out["broker"]["port"] = args.port
    if args.web_port is not None:
        out["web"]["port"] = args.web_port
    if args.source:
        out["robot"]["source"] = args.source
    if args.robot_id:
        out["robot"]["id"] = args.robot_id
    return out


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process


async def _wait_bound(
    host: str, port: int, proc: asyncio.subprocess.Process, timeout: float = 20.0
) -> None:
    """Until something (the broker we just started on a free port) has bound ``port``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"the broker exited with {proc.returncode} before listening")
        if not _port_free(host, port):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


async def _stop(child: Child, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; one line when it is gone."""
    proc = child.process
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            print(f"ars up: {child.name} killed after {timeout:.0f} s", flush=True)
            return
    print(f"ars up: {child.name} stopped (exit {proc.returncode})", flush=True)


async def stop_children(children: list[Child]) -> None:
    """The agents together, then the broker, so no agent sees its broker vanish."""
    agents = [c for c in children if c.name != "broker"]
    await asyncio.gather(*(_stop(c) for c in agents))
    for child in children:
        if child.name == "broker":
            await _stop(child)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def run(args: argparse.Namespace, settings: Settings) -> int:
    data_dir = settings.data_dir.resolve()
    rid = settings.robot.id
    creds = ensure_credentials(data_dir, [rid])
    host, port = "127.0.0.1", settings.broker.port
    if not _port_free(host, port):
        print(f"ars up: port {port} is taken; use --port", file=sys.stderr)
        return 2

    base = [sys.executable, "-m", "ars.cli"]
    common = ["--data-dir"]
    plan: list[tuple[str, list[str], str | None]] = [
        (
            "broker",
            [
                "broker",
                *common,
                str(data_dir / "broker"),
                "--port",
                str(port),
                "--password-file",
                str(creds.password_file),
            ],
            None,
        ),
        ("server", ["server", *common, str(data_dir / "server")], "server"),
        (
            "robot",
            [
                "robot",
                *common,
                str(data_dir / f"robot-{rid}"),
                "--id",
                rid,
                "--source",
                settings.robot.source,
            ],
            f"robot-{rid}",
        ),
    ]
    if not args.no_web:
        plan.append(
            (
                "web",
                ["web", *common, str(data_dir / "web"), "--port", str(settings.web.port)],
                "operator",
            )
        )

    children: list[Child] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0
    try:
        for name, argv, user in plan:
            env = dict(os.environ)
            if args.config:
                argv = [*argv[:1], "--config", str(args.config), *argv[1:]]
            if user is not None:
                env["ARS_MQTT__URL"] = creds.url_for(user, host, port)
            # process_group=0: its own group, so the terminal's Ctrl-C reaches only us
            proc = await asyncio.create_subprocess_exec(*base, *argv, env=env, process_group=0)
            children.append(Child(name, proc))
            if name == "broker":
                await _wait_bound(host, port, proc)
        print(
            f"ARS FineTune is up: broker mqtt://{host}:{port}, robot {rid} "
            f"({settings.robot.source})",
            flush=True,
        )
        if not args.no_web:
            print(f"web UI: http://{settings.web.host}:{settings.web.port}/", flush=True)
        print(f"credentials: {creds.secrets_file} (mode 0600); Ctrl-C stops everything", flush=True)
        waits = {asyncio.create_task(c.process.wait()): c for c in children}
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({*waits, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in waits:
                child = waits[task]
                print(
                    f"ars up: {child.name} exited with {child.process.returncode}; stopping",
                    file=sys.stderr,
                )
                exit_code = 1
        stopper.cancel()
        for task in waits:
            task.cancel()
        if stop.is_set():
            print("ars up: stopping the agents, then the broker", flush=True)
    finally:
        await stop_children(children)
    return exit_code
