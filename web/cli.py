"""``ars web``: serve the UI (127.0.0.1:8080 by default; a token is required off loopback)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from aiohttp import web

from common.config import Settings
from common.credentials import client_mqtt
from web.app import create_app
from web.security import is_loopback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8080)")
    parser.add_argument(
        "--token",
        default=None,
        help="access token, required off loopback (or ARS_WEB__TOKEN, kept out of ps)",
    )


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, Any] = {}
    for name in ("host", "port", "token"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return {"web": out} if out else {}


async def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.model_copy(update={"mqtt": client_mqtt(settings)})
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    host, port = settings.web.host, settings.web.port
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        shown = f"[{host}]" if ":" in host else host
        note = "" if is_loopback(host) else " (token required: add ?token=... or sign in)"
        print(f"ars web: http://{shown}:{port}/{note}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    except OSError as exc:
        print(f"ars web: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    finally:
        await runner.cleanup()
    return 0
