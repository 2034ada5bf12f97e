"""``ars broker``: the embedded amqtt broker with password file and per-robot ACL."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from broker.credentials import ensure_credentials
from broker.embedded import EmbeddedBroker
from common.config import Settings

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 1883, 0 = any free port)")
    parser.add_argument(
        "--password-file", help="user:scrypt-hash lines (default <data-dir>/broker/passwd)"
    )
    parser.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="admit clients without credentials (off by default)",
    )
    parser.add_argument(
        "--robot",
        action="append",
        default=[],
        metavar="ID",
        help="robot ids to create credentials for on first run (repeatable)",
    )


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    values = {
        "host": args.host,
        "port": args.port,
        "password_file": args.password_file,
        "allow_anonymous": args.allow_anonymous,
    }
    return {"broker": {k: v for k, v in values.items() if v is not None}}


async def run(args: argparse.Namespace, settings: Settings) -> int:
    cfg = settings.broker
    password_file = cfg.password_file
    if password_file is None and not cfg.allow_anonymous:
        creds = ensure_credentials(settings.data_dir, args.robot or ["rover1"])
        password_file = creds.password_file
        print(f"credentials (mode 0600): {creds.secrets_file}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EmbeddedBroker(cfg, password_file=password_file, prefix=settings.prefix) as broker:
        print(f"broker listening on {cfg.host}:{broker.port}", flush=True)
        await stop.wait()
    return 0
