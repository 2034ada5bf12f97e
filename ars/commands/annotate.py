"""``ars annotate --oracle [--robot ROBOT] [--limit N]``: label the open annotation session.

Connects as ``operator``, asks the server for the session's regions (``list_regions``), fetches
each unlabeled one (``get_region``), labels it from the simulator's ground truth
(``OracleAnnotator``, standing in for a person) and submits the mask (``submit_annotation``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from common.config import Settings
from common.credentials import client_mqtt
from common.envelope import MAGIC, decode, encode
from common.errors import ArsError, ProtocolError
from common.ids import check_id
from common.images import encode_png
from common.mqtt import MqttLink
from common.schemas import Command, Reply, parse_json
from common.topics import Topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--oracle", action="store_true", help="label from the simulator's ground truth"
    )
    parser.add_argument("--robot", help="regions of this robot (default: the open session's)")
    parser.add_argument("--limit", type=int, default=0, help="label at most N regions (0 = all)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per answer")


class Requester:
    """Request/response on ``ars/server/cmd``, one call at a time, over one MQTT link."""

    def __init__(self, link: MqttLink, topics: Topics, reply_topic: str, timeout: float) -> None:
        self.link = link
        self.topics = topics
        self.reply_topic = reply_topic
        self.timeout = timeout
        self._messages: AsyncIterator[tuple[str, bytes]] = link.messages()

    async def call(
        self, cmd: str, args: dict[str, Any], parts: Sequence[bytes] | None = None
    ) -> tuple[dict[str, Any], list[bytes]]:
        """(reply header or Reply fields, parts); ArsError when the server refuses or is silent."""
        command = Command(cmd=cmd, args=args, reply_to=self.reply_topic)
        if parts is None:
            payload = command.to_json()
        else:
            payload = encode(command.model_dump(mode="json"), list(parts))
        await self.link.publish(self.topics.server_cmd, payload, qos=1)
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ArsError(f"no answer to {cmd} from the server within {self.timeout:g} s")
            try:
                topic, raw = await asyncio.wait_for(anext(self._messages), remaining)
            except TimeoutError:
                continue
            if topic != self.reply_topic:
                continue
            if raw.startswith(MAGIC):
                env = decode(raw, max_bytes=self.link.settings.max_payload_bytes)
                header, got = env.header, env.parts
            else:
                header, got = parse_json(Reply, raw).model_dump(mode="json"), []
            if header.get("ref") != command.id:
                continue
            if not header.get("ok"):
                raise ArsError(f"{cmd} refused: {header.get('error')}")
            return header, got


async def label_all(
    req: Requester, regions: list[dict[str, Any]], *, progress: bool = True
) -> dict[str, Any]:
    """Label each region with the oracle; returns counts (labeled, failed, pixels, errors)."""
    from simulator.oracle import OracleAnnotator  # deferred: the simulator is only needed here

    oracle = OracleAnnotator()
    labeled = failed = pixels = 0
    errors: list[str] = []
    bar = tqdm(regions, unit="region", disable=not progress, file=sys.stderr)
    for entry in bar:
        region_id = check_id(entry.get("region_id"), "region id")
        try:
            header, _ = await req.call("get_region", {"region_id": region_id})
            region = header.get("region") or {}
            x, y, w, h = (int(v) for v in region["box"])
            frame_id = str(region["frame_id"])
            mask = await asyncio.to_thread(oracle.label_crop, frame_id, (x, y, w, h))
            png = await asyncio.to_thread(encode_png, np.ascontiguousarray(mask, dtype=np.uint8))
            await req.call("submit_annotation", {"region_id": region_id}, [png])
            labeled += 1
            pixels += int(np.count_nonzero(mask != 255))
        except (ArsError, KeyError, TypeError, ValueError) as exc:
            failed += 1
            errors.append(f"{region_id}: {exc}")
        bar.set_postfix(labeled=labeled, failed=failed)
    return {"labeled": labeled, "failed": failed, "pixels": pixels, "errors": errors}


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.oracle:
        print(
            "ars annotate: only --oracle labeling runs from the command line; "
            "people label in the web UI's editor",
            file=sys.stderr,
        )
        return 2
    if args.limit < 0:
        raise ProtocolError("--limit must be >= 0")
    topics = Topics(settings.prefix)
    client_id = f"ars-annotate-{uuid.uuid4().hex[:8]}"
    reply_topic = topics.server_reply(client_id)
    async with MqttLink(
        client_mqtt(settings), client_id=client_id, subscriptions=[(reply_topic, 1)]
    ) as link:
        await link.wait_connected(10)
        req = Requester(link, topics, reply_topic, args.timeout)
        query: dict[str, Any] = {}
        if args.robot:
            query["robot_id"] = check_id(args.robot, "robot id")
        header, _ = await req.call("list_regions", query)
        data = header.get("data") or {}
        session = data.get("session") or {}
        if not args.robot and not session.get("open"):
            print("no annotation session is open: labeling every stored region", file=sys.stderr)
        regions = data.get("regions", [])
        todo = [r for r in regions if not r.get("annotated") and not r.get("skipped")]
        if args.limit:
            todo = todo[: args.limit]
        result = await label_all(req, todo)
    print(
        f"labeled {result['labeled']} of {len(todo)} regions "
        f"({result['pixels']} pixels), {result['failed']} failed"
    )
    for line in result["errors"][:10]:
        print(f"  {line}", file=sys.stderr)
    return 0 if result["failed"] == 0 else 1
