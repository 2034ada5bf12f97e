"""``ars watch ROBOT``: stream a robot's state and events, and the server's, until Ctrl-C."""

from __future__ import annotations

import argparse
import uuid

from ars.commands.send import format_event
from common.config import Settings
from common.credentials import client_mqtt
from common.errors import ProtocolError
from common.ids import check_id
from common.mqtt import MqttLink
from common.schemas import Event, ModelStatus, RobotState, ServerState, parse_json
from common.topics import Topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("robot", help="robot id, e.g. rover1")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages (0 = never)")


def describe(topic: str, payload: bytes, topics: Topics, rid: str) -> str | None:
    if topic in (topics.robot_events(rid), topics.server_events):
        return format_event(parse_json(Event, payload))
    if topic == topics.robot_state(rid):
        s = parse_json(RobotState, payload)
        model = s.model.version if s.model else "-"
        return (
            f"state    online={s.online} segmenting={s.segmenting} model={model} fps={s.fps:.1f} "
            f"frames={s.frames} candidates={s.candidates} bytes_sent={s.bytes_sent}"
        )
    if topic == topics.model_status(rid):
        m = parse_json(ModelStatus, payload)
        return f"model    {m.version} {m.state} {m.received}/{m.chunks} {m.error or ''}"
    if topic == topics.server_state:
        st = parse_json(ServerState, payload)
        return (
            f"server   online={st.online} regions={st.regions} annotated={st.annotated} "
            f"finetune={st.finetune.state} {st.finetune.percent:.0f}% models={len(st.models)}"
        )
    return None


async def run(args: argparse.Namespace, settings: Settings) -> int:
    rid = check_id(args.robot, "robot id")
    topics = Topics(settings.prefix)
    subs = [
        (topics.robot_state(rid), 1),
        (topics.robot_events(rid), 1),
        (topics.model_status(rid), 1),
        (topics.server_state, 1),
        (topics.server_events, 1),
    ]
    seen = 0
    async with MqttLink(
        client_mqtt(settings), client_id=f"ars-watch-{uuid.uuid4().hex[:8]}", subscriptions=subs
    ) as link:
        async for topic, payload in link.messages():
            try:
                line = describe(topic, payload, topics, rid)
            except ProtocolError as exc:
                line = f"invalid  {topic}: {exc}"
            if line:
                print(line, flush=True)
            seen += 1
            if args.count and seen >= args.count:
                return 0
    return 0
