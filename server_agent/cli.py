"""``ars server``: run the server agent until SIGINT/SIGTERM.

The simulator provides the fine-tune runner's source replay and held-out frames.
The broker URL must carry the ``server`` user (``ars up`` passes it in ``ARS_MQTT__URL``).
On a signal it cancels a running fine-tune, publishes its retained offline state and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import torch

from common.config import Settings
from server_agent.agent import ServerAgent
from simulator.sets import SimulatorSets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-model",
        type=Path,
        help="checkpoint robots start from (default: the shipped base model)",
    )
    parser.add_argument("--iterations", type=int, help="fine-tune iterations (default 100)")
    parser.add_argument("--threads", type=int, help="torch threads for fine-tuning")
    parser.add_argument("--eval-frames", type=int, help="held-out frames per domain")
    parser.add_argument("--replay-frames", type=int, help="source-domain replay frames")
    parser.add_argument(
        "--no-gate", action="store_true", help="offer models even when worse on rural frames"
    )


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Flags into ``settings.server`` (flags win over the file and the environment)."""
    server: dict[str, Any] = {}
    for attr in ("iterations", "threads", "eval_frames", "replay_frames"):
        value = getattr(args, attr, None)
        if value is not None:
            server[attr] = value
    if getattr(args, "base_model", None) is not None:
        server["base_model"] = str(args.base_model)
    if getattr(args, "no_gate", False):
        server["gate"] = False
    return {"server": server} if server else {}


async def run(args: argparse.Namespace, settings: Settings) -> int:
    torch.set_num_threads(settings.server.threads)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with ServerAgent(settings, sets=SimulatorSets()):
            print(
                f"server: data {settings.data_dir}, broker {settings.mqtt.url.split('@')[-1]}",
                flush=True,
            )
            await stop.wait()
            print("server: stopping", flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0
