"""``ars up``: the whole system on one machine, each part its own process.

Starts the embedded broker, the server agent, the web UI and one simulated robot
(``sim:drive``: urban, then rural), with credentials generated on first run (mode 0600) and
passed to each child through its environment, never its command line. Ctrl-C (or SIGTERM) stops
every child cleanly; if one child dies, the others are stopped too and the exit code says so.
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


async def _wait_port(host: str, port: int, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


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
            proc = await asyncio.create_subprocess_exec(*base, *argv, env=env)
            children.append(Child(name, proc))
            if name == "broker":
                await _wait_port(host, port)
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
    finally:
        for child in reversed(children):
            if child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                await asyncio.wait_for(child.process.wait(), 15)
            except TimeoutError:
                child.process.kill()
                await child.process.wait()
    return exit_code
