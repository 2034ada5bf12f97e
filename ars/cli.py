"""``ars``: one console script, one subcommand per tool. Subcommand modules load lazily so
``ars --help`` stays fast and a broken optional part never blocks the others.

A subcommand module provides ``add_arguments(parser)`` and ``run(args, settings) -> int``
(async ``run`` is awaited under ``asyncio.run``), and optionally ``overrides(args)`` returning
``{section: {field: value}}`` so its flags land in the validated settings (flags win).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.config import Settings, load_settings
from common.errors import ArsError
from common.logsetup import setup_logging

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("ars.up", "run everything: embedded broker, server, web UI and a simulated robot"),
    "broker": ("broker.cli", "run the embedded MQTT broker"),
    "robot": ("robot_agent.cli", "run a robot agent"),
    "server": ("server_agent.cli", "run the server agent"),
    "web": ("web.cli", "run the web UI"),
    "send": ("ars.commands.send", "send one of the seven commands to a robot"),
    "watch": ("ars.commands.watch", "stream a robot's state and events"),
    "annotate": ("ars.commands.annotate", "label the open annotation session (--oracle)"),
    "pretrain": ("ars.commands.pretrain", "train the base model on urban simulator frames"),
    "eval": ("ars.commands.evaluate", "evaluate a checkpoint on held-out urban and rural frames"),
    "bench": ("ars.bench", "run a benchmark and print one JSON object"),
    "export": ("ars.export", "export labeled regions as a data set, or a model as ONNX or .pt"),
}


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument(
        "--broker", dest="broker_url", help="mqtt://user:pass@host:port or mqtts://"
    )
    parser.add_argument("--data-dir", type=Path, help="where this process keeps its state")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--prefix", help="topic prefix (default ars)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Defaults < TOML file < ARS_* environment < flags."""
    overrides: dict[str, Any] = {}
    if getattr(args, "broker_url", None):
        overrides["mqtt"] = {"url": args.broker_url}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = str(args.data_dir)
    if getattr(args, "log_level", None):
        overrides["log_level"] = args.log_level
    if getattr(args, "prefix", None):
        overrides["prefix"] = args.prefix
    for section, values in getattr(args, "section_overrides", {}).items():
        overrides.setdefault(section, {}).update(values)
    return load_settings(getattr(args, "config", None), environ=os.environ, overrides=overrides)


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(
        prog="ars", description="ARS FineTune: on-the-fly tuning of a robot's segmentation model"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    module: Any = None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            _common_flags(p)
            module = importlib.import_module(module_name)
            module.add_arguments(p)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser, module = build_parser(argv)
        args = parser.parse_args(argv)
        if hasattr(module, "overrides"):
            args.section_overrides = module.overrides(args)
        settings = settings_from_args(args)
        setup_logging(settings.log_level)
        result = module.run(args, settings)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except ArsError as exc:
        print(f"ars: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
