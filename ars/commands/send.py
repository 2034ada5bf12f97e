"""``ars send ROBOT COMMAND``: one of the seven buttons (or rollback) from the shell.

Prints what a person wants to read (the answer's message, a progress line, a fine-tune's
figures with what each is measured on); ``--json`` prints each event of the command as one raw
JSON line instead, for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

from common.config import Settings
from common.credentials import client_mqtt
from common.errors import ProtocolError
from common.ids import check_id
from common.mqtt import MqttLink
from common.schemas import BUTTONS, Command, Event, parse_json
from common.topics import Topics

FINAL_KINDS = {"done", "failed", "rejected"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("robot", help="robot id, e.g. rover1")
    parser.add_argument(
        "cmd", metavar="COMMAND", help=f"one of {', '.join(BUTTONS)}, rollback, cancel_finetune"
    )
    parser.add_argument("--args", default="{}", help="JSON object of command arguments")
    parser.add_argument(
        "--force", action="store_true", help="transfer_model: skip the evaluation gate"
    )
    parser.add_argument("--wait", action="store_true", help="wait until the command is done")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    parser.add_argument(
        "--json", action="store_true", help="print the command's events as raw JSON lines"
    )


def _scalars(data: dict[str, Any]) -> str:
    """The short fields of an event's data (numbers, strings, booleans), not lists or maps."""
    keep = {k: v for k, v in data.items() if isinstance(v, int | float | str | bool)}
    text = " ".join(f"{k}={v}" for k, v in keep.items())
    return text if len(text) <= 200 else text[:197] + "..."


def format_figures(data: dict[str, Any]) -> list[str]:
    """A fine-tune's figures, one line each: name, before -> after, what it is measured on."""
    lines = []
    for row in data.get("figures") or []:
        if not isinstance(row, dict):
            continue
        before, after = row.get("before"), row.get("after")
        b = f"{before:.3f}" if isinstance(before, int | float) else "  ?  "
        a = f"{after:.3f}" if isinstance(after, int | float) else "  ?  "
        name, on = row.get("name", "?"), row.get("evaluated_on", "")
        lines.append(f"  {name:<17} mIoU {b} -> {a}   {on}")
    return lines


def format_event(event: Event) -> str:
    """One line for a person (plus a fine-tune's figure lines): no loss lists, no raw dicts."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
    d = event.data
    if event.kind == "progress":
        extra = f" {d.get('percent', 0):.0f}% loss={d.get('loss')} eta={d.get('eta_s')}s"
    elif d.get("figures"):
        extra = ""  # the message says it; the figures follow one per line
    else:
        short = _scalars(d)
        extra = f" ({short})" if short else ""
    line = f"{stamp} {event.source:>14} {event.level:<7} {event.kind:<8} {event.msg}{extra}"
    return "\n".join([line, *format_figures(d)])


async def run(args: argparse.Namespace, settings: Settings) -> int:
    rid = check_id(args.robot, "robot id")
    try:
        cmd_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"--args is not JSON: {exc}") from exc
    if args.force:
        cmd_args["force"] = True
    command = Command(cmd=args.cmd, args=cmd_args)
    topics = Topics(settings.prefix)
    subs = [(topics.robot_events(rid), 1), (topics.server_events, 1)]
    async with MqttLink(
        client_mqtt(settings), client_id=f"ars-send-{uuid.uuid4().hex[:8]}", subscriptions=subs
    ) as link:
        await link.wait_connected(10)
        await link.publish(topics.robot_cmd(rid), command.to_json(), qos=1)
        if not args.json:
            print(f"sent {command.cmd} id={command.id} to {rid}")
        deadline = time.monotonic() + (args.timeout if args.wait else 5.0)
        status = 0
        messages = link.messages()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if args.wait:
                    print("timed out waiting for the command to finish", file=sys.stderr)
                    return 1
                return status
            try:
                _, payload = await asyncio.wait_for(anext(messages), remaining)
            except TimeoutError:
                continue
            try:
                event = parse_json(Event, payload)
            except ProtocolError:
                continue
            if event.ref != command.id:
                continue
            print(event.model_dump_json() if args.json else format_event(event), flush=True)
            if event.kind in {"rejected", "failed"}:
                status = 1
            if event.kind in FINAL_KINDS:
                return status
