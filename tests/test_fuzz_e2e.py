"""Bad input end to end: the corpus published through a real broker to running agents.

Both agents run (in-process) with some stored state: the robot with candidates, the server
with a region. A client with admin rights publishes every corpus payload (and a sample that
hypothesis draws) on each topic an agent handles, as a buggy or hostile client could. Then:
every payload on a robot or server topic was answered by an error/rejected event (counted per
topic), both agents still answer a real command, and their data directories (files and SQLite
rows) are unchanged. Runs on the embedded broker and on Mosquitto.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from common.schemas import Event
from common.topics import Topics
from robot_agent.agent import RobotAgent
from server_agent.agent import ServerAgent
from simulator.sets import SimulatorSets
from tests.helpers.brokers import BrokerHandle
from tests.helpers.faults import corpus, raw_envelope, tree_digest
from tests.helpers.loop import LoopOperator
from tests.helpers.robot import robot_settings
from tests.helpers.server import make_region, server_settings
from tests.test_fuzz_handlers import (
    CHUNK_BASE,
    REGION_BASE,
    TRIED,
    draw_many,
    envelope_payloads,
    image_parts,
)

T = Topics("ars")
RID = "rover1"


def payloads() -> list[bytes]:
    """The corpus minus payloads a broker refuses outright (over its packet limit)."""
    return [p for name, p in corpus(RID).items() if name != "oversize payload"]


@pytest.mark.parametrize("kind", ["amqtt", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
async def test_corpus_through_the_broker_changes_nothing(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers.brokers import amqtt_broker, mosquitto_broker

    factory = amqtt_broker if kind == "amqtt" else mosquitto_broker
    async with factory(tmp_path) as broker:
        await _run(broker, tmp_path, capsys, kind)


async def _run(
    broker: BrokerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    rs = robot_settings(broker, tmp_path)
    ss = server_settings(broker, tmp_path / "server", base_model=rs.robot.model)
    cases = payloads()
    generated = draw_many(envelope_payloads(REGION_BASE, image_parts), 25) + draw_many(
        envelope_payloads(CHUNK_BASE, image_parts), 25
    )
    plan = {
        T.robot_cmd(RID): [p for p in cases if b"start_segmentation" not in p],
        T.robot_regions_ack(RID): cases,
        T.model_offer(RID): cases,
        T.model_chunk(RID): cases + generated[25:],
        T.robot_regions(RID): cases + generated[:25],
        T.server_cmd: cases,
    }
    async with (
        LoopOperator(broker) as op,
        ServerAgent(ss, sets=SimulatorSets(), base_checkpoint=rs.robot.model) as server,
        RobotAgent(rs) as robot,
    ):
        await server.wait_connected()
        await robot.link.wait_connected(30)
        # stored state first: candidates on the robot, a region on the server
        await op.run("start_segmentation")
        await op.until(lambda: robot.frames >= 4)
        await op.run("stop_segmentation")
        header, crop, mask = make_region(region_id="kept-1")
        body = {**header.model_dump(mode="json"), "type": "region"}
        await op.link.publish(T.robot_regions(RID), raw_envelope(body, [crop, mask]))
        await op.until(lambda: server.store.counts()[0] == 1)
        robot_before = tree_digest(rs.data_dir)
        server_before = tree_digest(ss.data_dir, skip_tables=("robots",))
        mark = len(op.received)
        sent = 0
        for topic, items in plan.items():
            for payload in items:
                await op.link.publish(topic, payload, qos=1)
                sent += 1
        # a real command after all of them: its answer means every earlier one was handled
        last = await op.answer(await op.send("rollback"), timeout=120)
        assert last.kind == "rejected" and "no previous model" in last.msg
        listed = await op.until(
            lambda: server.store.counts() == (1, 0) and server.link.connected.is_set()
        )
        assert listed
        robot_topics = (T.robot_cmd(RID), T.robot_regions_ack(RID), T.model_offer(RID))
        topics = (*robot_topics, T.robot_regions(RID), T.server_cmd)

        def about(topic: str) -> list[Event]:
            errors = [e for e in op.all_events(mark) if e.kind in ("error", "rejected")]
            if topic == T.robot_cmd(RID):  # the robot answers bad commands with "rejected"
                return [e for e in errors if e.kind == "rejected" and e.source.startswith("robot")]
            return [e for e in errors if topic in e.msg or e.data.get("topic") == topic]

        # the robot's answer orders only the robot's handling: the server's events may follow
        with contextlib.suppress(TimeoutError):
            await op.until(lambda: all(about(t) for t in topics), 30)
        for topic in topics:
            assert about(topic), f"no error event for bad payloads on {topic}"
        errors = [e for e in op.all_events(mark) if e.kind in ("error", "rejected")]
        assert tree_digest(rs.data_dir) == robot_before
        assert tree_digest(ss.data_dir, skip_tables=("robots",)) == server_before
        assert all(not t.done() for t in robot._tasks)
        assert all(not t.done() for t in server._tasks)
    TRIED[f"e2e {kind}"] = sent
    with capsys.disabled():
        print(f"\n{kind}: {sent} bad payloads through the broker, {len(errors)} error events")
