"""``ars bench NAME --json``: each benchmark prints one JSON object and exits 0.

A benchmark module ``ars.bench.<name>`` provides ``add_arguments(parser)`` (optional) and
``run(args, settings) -> dict``; figures are ratios against a baseline measured in the same run
where one exists.
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from common.config import Settings

BENCHMARKS: dict[str, str] = {
    "sim": "simulator frame rate at 640x480 and 320x240",
    "mining": "inference, entropy and window search against the average-pool reference",
    "domain-gap": "the base model's mIoU on held-out urban and rural frames",
    "finetune": "one server fine-tune timed on the CPU and, when present, on CUDA",
    "adaptation": "rounds of 5 percent labels on a route: mIoU ahead, elsewhere and urban per rule",
    "robot": "the robot agent's steady-state loop (fps, stage times) and inference choices",
    "transfer": "a model version from offer to active, fp32 and fp16, against raw MQTT",
    "preview": "robot preview to a web WebSocket client: latency, delivery, web CPU",
    "loop": "the whole loop headless with the oracle annotator, stage by stage",
    "fleet": "N simulated robots on one broker, server and web: fps, CPU, RSS, drops "
    "(--light: robots without a model, the server-side knee)",
    "soak": "N robots looping the whole loop with the oracle: loops, errors, RSS growth, losses",
    "annotation": "strokes per region in the real editor (simulated annotator) vs brush only",
}


def _module_name(name: str) -> str:
    return "ars.bench." + name.replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, help_text in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print only the JSON object")
        p.add_argument("--out", help="also write the JSON object to this file")
        # bench modules keep heavy imports (torch) inside run(), so importing them here is cheap
        module = importlib.import_module(_module_name(name))
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)


def run(args: argparse.Namespace, settings: Settings) -> int:
    module = importlib.import_module(_module_name(args.bench))
    result: dict[str, Any] = module.run(args, settings)
    text = json.dumps(result, indent=None if args.json else 2, sort_keys=False)
    print(text, flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0
