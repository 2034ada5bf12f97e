"""Bad input on every MQTT handler of the robot, the server and the web relay.

Each handler is driven at its function boundary (the ``(payload, topic)`` handler the robot's
dispatcher calls, the server's ``_route(topic, payload)``, the relay's ``route(topic, payload)``)
with payloads that hypothesis generates from valid messages by mutation (fields replaced,
removed or added; NaN, negative and huge numbers; ids with ``/`` and ``..``; truncation; random
bytes; envelopes whose declared lengths lie) plus the hand-made corpus of
``tests/helpers/faults.corpus``. The property, for every payload: the handler returns, or raises
an ``ArsError`` with a message (which the dispatcher turns into the error event); any other
exception is a bug. After all of them the agent's data directory (files and SQLite rows) is
unchanged and the agent still answers a real command.

Payloads are drawn by hypothesis in a synchronous helper and then replayed on the running agent
(one event loop); a failure names the payload, so it can be added to the corpus.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from common.envelope import MAGIC
from common.errors import ArsError
from common.images import encode_png
from common.schemas import ROBOT_COMMANDS, SERVER_COMMANDS
from common.topics import Topics
from robot_agent.agent import RobotAgent
from server_agent.agent import ServerAgent
from simulator.sets import SimulatorSets
from tests.helpers.brokers import BrokerHandle
from tests.helpers.faults import bomb_png, corpus, raw_envelope, sqlite_rows, tree_digest
from tests.helpers.robot import operator as robot_operator
from tests.helpers.robot import robot_settings
from tests.helpers.server import make_region, server_settings, tiny_checkpoint

T = Topics("ars")
RID = "rover1"
EXAMPLES = 60
#: counted by the tests below and reported in docs/reliability.md (pytest -s prints them)
TRIED: dict[str, int] = {}

# --- strategies ------------------------------------------------------------------------------
NASTY_STRINGS = [
    "",
    "..",
    "../x",
    "a/b",
    "a..b",
    "x" * 300,
    "rover1/../rover2",
    "\x00",
    "é",
    "#",
    "+",
    "ars/robots/rover1/cmd",
]
NASTY_NUMBERS = [math.nan, math.inf, -math.inf, -1, 0, 2**63, -(2**63), 10**30, 1e308, -0.5]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24),
    st.sampled_from(NASTY_STRINGS),
    st.sampled_from(NASTY_NUMBERS),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with some fields replaced by nasty values, some removed, maybe one added."""
    out = dict(base)
    keys = sorted(base)
    for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        out[key] = draw(json_values)
    for key in draw(st.lists(st.sampled_from(keys), max_size=1, unique=True)):
        out.pop(key, None)
    if draw(st.booleans()) and draw(st.integers(0, 5)) == 0:
        out[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return out


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def truncated(draw: st.DrawFn, payload: st.SearchStrategy[bytes]) -> bytes:
    data = draw(payload)
    if data and draw(st.booleans()):
        return data[: draw(st.integers(0, len(data) - 1))]
    return data


def json_payloads(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    return truncated(mutated(base).map(dumps)) | st.binary(max_size=120)


@st.composite
def envelopes(draw: st.DrawFn, base: dict[str, Any], parts: st.SearchStrategy[bytes]) -> bytes:
    header = draw(mutated(base))
    body = draw(st.lists(parts, max_size=3))
    if draw(st.integers(0, 3)) == 0:  # lengths that lie
        declare: list[Any] = draw(st.lists(st.integers(-5, 2**40) | json_values, max_size=3))
        return raw_envelope(header, body, declare=declare)
    payload = raw_envelope(header, body)
    if draw(st.integers(0, 4)) == 0:
        payload = payload[: draw(st.integers(0, len(payload)))]
    return payload


def envelope_payloads(
    base: dict[str, Any], parts: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes]:
    return envelopes(base, parts) | st.binary(max_size=120).map(lambda b: MAGIC + b)


def draw_many(strategy: st.SearchStrategy[bytes], n: int = EXAMPLES) -> list[bytes]:
    """``n`` payloads drawn by hypothesis (generation only; replayed on a running agent)."""
    out: list[bytes] = []

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(payload: bytes) -> None:
        out.append(payload)

    collect()
    return out


# --- images the region and annotation handlers get -------------------------------------------
def bad_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    return [
        b"",
        b"not an image",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
        bomb_png(),
        encode_png(rng.integers(0, 255, (7, 9, 3), dtype=np.uint8)),  # wrong size
        encode_png(np.full((24, 32), 77, np.uint8)),  # unknown class 77
        encode_png(np.zeros((24, 32, 3), np.uint8)),  # RGB where a mask is due
    ]


image_parts = st.sampled_from(bad_images()) | st.binary(max_size=64)

# --- payload sets per topic ------------------------------------------------------------------
CMD_BASE = {"v": 1, "cmd": "transfer_data", "id": "c1", "args": {}}
OFFER_BASE = {
    "v": 1,
    "robot_id": RID,
    "version": "v9",
    "sha256": "ab" * 32,
    "bytes": 1000,
    "chunk_size": 100,
    "chunks": 10,
    "arch": "tiny",
    "dtype": "fp32",
    "classes": [],
    "metrics": {},
}
CHUNK_BASE = {"v": 1, "version": "v9", "index": 0, "sha256": "cd" * 32}
ACK_BASE = {"v": 1, "robot_id": RID, "transfer_id": "t1", "stored": ["r1"], "rejected": {}}
REGION_BASE = {
    "v": 1,
    "type": "region",
    "robot_id": RID,
    "transfer_id": "t1",
    "region_id": "r1",
    "frame_id": "f1",
    "score": 0.5,
    "mean_entropy": 0.1,
    "region_entropy": 0.2,
    "box": [16, 12, 32, 24],
    "frame_size": [64, 48],
    "model_version": "base",
}
MANIFEST_BASE = {
    "v": 1,
    "type": "manifest",
    "robot_id": RID,
    "transfer_id": "t1",
    "region_ids": ["r1"],
    "frames_considered": 5,
    "bytes_sent": 10,
    "full_frames_bytes": 100,
}
STATUS_BASE = {
    "v": 1,
    "robot_id": RID,
    "version": "v9",
    "state": "receiving",
    "received": 1,
    "chunks": 2,
    "missing": [1],
    "error": None,
}
STATE_BASE = {"v": 1, "robot_id": RID, "online": True, "segmenting": False, "frames": 3}
REQUEST_BASE = {
    "v": 1,
    "cmd": "get_region",
    "id": "q1",
    "args": {"region_id": "nope"},
    "reply_to": "ars/server/reply/fuzz",
}
PREVIEW_BASE = {
    "v": 1,
    "robot_id": RID,
    "frame_id": "f1",
    "model_version": "base",
    "infer_ms": 3.0,
    "width": 64,
    "height": 48,
    "fps": 2.0,
}


def not_acting(cmds: frozenset[str] | set[str]) -> Callable[[bytes], bool]:
    """Filter: a generated command that is a real button would act (that is not bad input)."""

    def keep(payload: bytes) -> bool:
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return True
        return not (
            isinstance(data, dict) and isinstance(data.get("cmd"), str) and data["cmd"] in cmds
        )

    return keep


# --- the check shared by every handler -------------------------------------------------------
async def feed(
    name: str,
    handler: Callable[[str, bytes], Awaitable[None]],
    topic: str,
    payloads: list[bytes],
) -> int:
    """Every payload: the handler returns or raises ArsError with a reason; returns refusals."""
    refused = 0
    for payload in payloads:
        try:
            await handler(topic, payload)
        except ArsError as exc:
            assert str(exc).strip(), f"{name}: empty reason for {payload[:200]!r}"
            refused += 1
        except Exception as exc:
            raise AssertionError(
                f"{name}: {exc.__class__.__name__}: {exc} for payload {payload[:300]!r}"
            ) from exc
    TRIED[name] = TRIED.get(name, 0) + len(payloads)
    return refused


def report(capsys: pytest.CaptureFixture[str], title: str) -> None:
    with capsys.disabled():
        print(f"\n{title}: " + json.dumps(TRIED, sort_keys=True))


# --- robot -----------------------------------------------------------------------------------
async def test_robot_handlers_refuse_bad_payloads(
    broker: BrokerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rs = robot_settings(broker, tmp_path)
    cases = corpus(RID)
    robot_acting = {"start_segmentation"}
    plan = {
        "cmd": (
            T.robot_cmd(RID),
            draw_many(json_payloads(CMD_BASE).filter(not_acting(robot_acting))),
        ),
        "regions/ack": (T.robot_regions_ack(RID), draw_many(json_payloads(ACK_BASE))),
        "model/offer": (T.model_offer(RID), draw_many(json_payloads(OFFER_BASE))),
        "model/chunk": (
            T.model_chunk(RID),
            draw_many(envelope_payloads(CHUNK_BASE, st.binary(max_size=200))),
        ),
    }
    async with robot_operator(broker) as op, RobotAgent(rs) as robot:
        await op.wait(lambda: [s for s in op.states() if s.online])
        routes = robot.routes()  # the dispatcher's own handlers

        async def route(topic: str, payload: bytes) -> None:
            found = routes.match(topic)
            assert found is not None, topic
            await found[0](payload, topic)

        running = robot.slot.current.sha256
        before = tree_digest(rs.data_dir)
        for leaf, (topic, generated) in plan.items():
            hand = [p for p in cases.values() if not_acting(robot_acting)(p)]
            await feed(f"robot {leaf}", route, topic, generated + hand)
        assert tree_digest(rs.data_dir) == before
        assert robot.slot.current.sha256 == running
        assert all(not t.done() for t in robot._tasks), "a robot task died"
        # the robot still works: a real command gets its answer
        answer = await op.answer(await op.send("rollback"))
        assert answer.kind == "rejected" and "no previous model" in answer.msg
        # bad commands were answered with a rejected event each (exactly one answer)
        assert len([e for e in op.events() if e.kind == "rejected"]) >= 10
    report(capsys, "robot handler inputs")


# --- server ----------------------------------------------------------------------------------
def good_region_parts() -> tuple[bytes, bytes]:
    _, crop, mask = make_region()
    return crop, mask


async def test_server_handlers_refuse_bad_payloads(
    broker: BrokerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tiny_checkpoint(tmp_path / "base.pt")
    ss = server_settings(broker, tmp_path / "server", base_model=base)
    crop, mask = good_region_parts()
    parts = image_parts | st.sampled_from([crop, mask])
    cases = corpus(RID)
    server_acting = set(SERVER_COMMANDS)
    robot_topic = T.robot_cmd(RID)
    plan: dict[str, tuple[str, list[bytes]]] = {
        "regions": (
            T.robot_regions(RID),
            draw_many(envelope_payloads(REGION_BASE, parts))
            + draw_many(envelope_payloads(MANIFEST_BASE, parts), 30),
        ),
        "robots cmd": (
            robot_topic,
            draw_many(
                json_payloads({**CMD_BASE, "cmd": "start_finetune"}).filter(
                    not_acting(server_acting)
                ),
                30,
            ),
        ),
        "model/status": (T.model_status(RID), draw_many(json_payloads(STATUS_BASE), 40)),
        "state": (T.robot_state(RID), draw_many(json_payloads(STATE_BASE), 40)),
        "server cmd": (
            T.server_cmd,
            draw_many(json_payloads(REQUEST_BASE))
            + draw_many(envelope_payloads({**REQUEST_BASE, "cmd": "submit_annotation"}, parts), 40),
        ),
    }
    # the region handler also gets well-formed regions with bad images, one per kind
    header, _, _ = make_region(region_id="img-probe")
    # (the last two are bad only as masks: a grey or RGB picture of the right size is a crop)
    bad = bad_images()
    pairs = [[img, mask] for img in bad[:5]] + [[crop, img] for img in bad]
    for i, pair in enumerate(pairs):
        h = {**header.model_dump(mode="json"), "type": "region", "region_id": f"bad-{i}"}
        plan["regions"][1].append(raw_envelope(h, pair))
    async with ServerAgent(ss, sets=SimulatorSets(), base_checkpoint=base) as server:
        await server.wait_connected()
        # one real region, so get_region/submit_annotation have something to refuse against
        real, rc, rm = make_region(region_id="real-1")
        await server._route(
            T.robot_regions(RID),
            raw_envelope({**real.model_dump(mode="json"), "type": "region"}, [rc, rm]),
        )
        assert server.store.counts() == (1, 0)
        # valid robot state and status may legitimately record what a robot runs: not compared
        db = ss.data_dir / "server.sqlite3"
        before = tree_digest(ss.data_dir, skip_tables=("robots",))
        before_rows = sqlite_rows(db, ("robots",))
        for leaf, (topic, generated) in plan.items():
            hand = [p for p in cases.values() if not_acting(server_acting)(p)]
            await feed(f"server {leaf}", server._route, topic, generated + hand)
        # What was stored stays byte for byte and row for row. The generator may draw a header
        # mutation that is still a valid region with the valid crop and mask (its draws follow
        # the source's constants): the server may store that one, and nothing else.
        after = tree_digest(ss.data_dir, skip_tables=("robots",))
        kept = {k: v for k, v in before.items() if k != db.name}
        assert {k: after.get(k) for k in kept} == kept
        after_rows = sqlite_rows(db, ("robots",))
        for table, rows in before_rows.items():
            assert set(rows) <= set(after_rows[table]), f"a stored {table} row changed"
        total, annotated = server.store.counts()
        assert total >= 1 and annotated == 0
        assert all(f.startswith(f"regions/{RID}/") for f in set(after) - set(before))
        assert len(set(after) - set(before)) <= 2 * (total - 1)  # crop and prediction each
        assert all(not t.done() for t in server._tasks), "a server task died"
        state = await server.state()
        assert state.online and state.regions == total
    report(capsys, "server handler inputs")


# --- web relay -------------------------------------------------------------------------------
async def test_web_relay_refuses_bad_payloads(
    broker: BrokerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    from common.config import Settings
    from common.mqtt import MqttLink
    from web.queue import LatestWinsQueue
    from web.relay import Relay

    settings = Settings(mqtt=broker.mqtt("operator"))
    link = MqttLink(settings.mqtt, client_id="fuzz-relay")  # never entered: route() only
    relay = Relay(settings, link, "fuzz-relay")
    browser = LatestWinsQueue(maxsize=10_000)
    relay.attach(browser)
    cases = list(corpus(RID).values())
    plan = {
        "preview": (T.robot_preview(RID), draw_many(envelope_payloads(PREVIEW_BASE, image_parts))),
        "state": (T.robot_state(RID), draw_many(json_payloads(STATE_BASE), 40)),
        "events": (
            T.robot_events(RID),
            draw_many(
                json_payloads({"v": 1, "source": "x", "level": "info", "kind": "info", "msg": "m"}),
                40,
            ),
        ),
        "model/status": (T.model_status(RID), draw_many(json_payloads(STATUS_BASE), 40)),
        "server state": (T.server_state, draw_many(json_payloads({"v": 1, "online": True}), 40)),
        "server events": (
            T.server_events,
            draw_many(
                json_payloads(
                    {
                        "v": 1,
                        "source": "server",
                        "level": "info",
                        "kind": "progress",
                        "msg": "m",
                        "data": {"job_id": "j", "iteration": 1, "loss": 0.5},
                    }
                ),
                40,
            ),
        ),
        "reply": (
            relay.reply_topic,
            draw_many(json_payloads({"v": 1, "ref": "x", "ok": True, "data": {}}), 40),
        ),
    }

    async def route(topic: str, payload: bytes) -> None:
        relay.route(topic, payload)

    for leaf, (topic, generated) in plan.items():
        await feed(f"web relay {leaf}", route, topic, generated + cases)
    # nothing the browser got is anything but JSON text or a preview envelope that validated
    while (item := browser.get_nowait()) is not None:
        if isinstance(item, bytes):
            assert item.startswith(MAGIC)
        else:
            json.loads(item)
    report(capsys, "web relay inputs")


def test_corpus_names_every_case_once() -> None:
    """The corpus is what docs/reliability.md lists; its payloads are distinct."""
    cases = corpus(RID)
    digests = {hashlib.sha256(p).hexdigest() for p in cases.values()}
    assert len(digests) == len(cases) >= 45
    assert not ROBOT_COMMANDS & {"self_destruct"}
