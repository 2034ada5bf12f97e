"""Fault: a network between robot and broker that delays packets and cuts connections at random.

The robot's MQTT link goes through ``FaultProxy`` (20 ms each way, connections cut after an
exponential time with mean 1/``DROP_RATE`` s, deterministic per seed); server and operator talk
to the broker directly. The whole loop must still complete: segment, Transfer Data, annotate
(oracle), fine-tune (a few iterations), Transfer Model; the robot ends on the new version and
every region the robot marked sent is in the server's store.

Commands to the robot can be lost while its link is down (clean sessions), so the test, like an
operator, repeats a command until its effect shows; it never relies on one message arriving.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ars.commands import annotate
from common.config import MqttSettings, RobotSettings, ServerSettings, Settings
from common.hashing import sha256_file
from robot_agent.agent import RobotAgent
from server_agent.agent import ServerAgent
from simulator.sets import SimulatorSets
from tests.helpers.brokers import BrokerHandle
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.faults import sqlite_rows
from tests.helpers.loop import RID, ROBOT, LoopOperator
from tests.helpers.server import tiny_checkpoint

pytestmark = pytest.mark.slow

DROP_RATE = 0.4  # cuts per second and connection (mean life 2.5 s)
DELAY_MS = 20.0


async def retry_until(
    op: LoopOperator,
    send: Callable[[], Any],
    done: Callable[[], bool],
    *,
    every: float = 8.0,
    timeout: float = 180.0,
) -> int:
    """Send (again every ``every`` s) until ``done()``; returns the number of sends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sends = 0
    while not done():
        if loop.time() > deadline:
            raise TimeoutError(f"not done after {sends} sends")
        await send()
        sends += 1
        step = loop.time() + every
        while not done() and loop.time() < step:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return sends


async def test_loop_completes_over_a_dropping_network(
    broker: BrokerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tiny_checkpoint(tmp_path / "base.pt", version="base")
    proxy = FaultProxy(
        "127.0.0.1",
        broker.port,
        drop_rate_per_s=DROP_RATE,
        delay_ms=DELAY_MS,
        seed=3,
        lifetime_s=600,
    )
    async with proxy:
        robot_mqtt = MqttSettings(
            url=broker.creds.url_for(f"robot-{RID}", "127.0.0.1", proxy.port),
            reconnect_min_s=0.1,
            reconnect_max_s=1.0,
        )
        rs = Settings(
            data_dir=tmp_path / "robot",
            mqtt=robot_mqtt,
            robot=RobotSettings(**{**ROBOT, "camera_fps": 10.0}, model=base),
            server=ServerSettings(resend_timeout_s=0.5),
        )
        ss = Settings(
            data_dir=tmp_path / "server",
            mqtt=broker.mqtt("server"),
            server=ServerSettings(
                iterations=5,
                batch_size=2,
                train_width=128,
                train_height=96,
                replay_frames=2,
                eval_frames=2,
                chunk_size=4096,
                threads=1,
                device="cpu",
            ),
        )
        async with (
            LoopOperator(broker) as op,
            ServerAgent(ss, sets=SimulatorSets(), base_checkpoint=base) as server,
            RobotAgent(rs, ack_timeout=5.0) as robot,
        ):
            await server.wait_connected()
            sends: dict[str, int] = {}
            sends["start_segmentation"] = await retry_until(
                op, lambda: op.send("start_segmentation"), lambda: robot.segmenting
            )
            await op.until(lambda: robot.frames >= 20, timeout=120)
            sends["stop_segmentation"] = await retry_until(
                op, lambda: op.send("stop_segmentation"), lambda: not robot.segmenting
            )
            sends["transfer_data"] = await retry_until(
                op,
                lambda: op.send("transfer_data"),
                lambda: server.store.counts()[0] > 0 and not robot.transfer.busy,
                every=12,
            )
            await op.until(lambda: not robot.transfer.busy, timeout=30)
            # annotation and fine-tuning are between server and operator (no faults there)
            await op.run("start_annotation")
            args = argparse.Namespace(oracle=True, robot=None, limit=0, timeout=15.0)
            assert await annotate.run(args, Settings(mqtt=broker.mqtt("operator"))) == 0
            await op.run("stop_annotation")
            tuned = await op.run("start_finetune", timeout=180)
            version = tuned.data["version"]
            sends["transfer_model"] = await retry_until(
                op,
                lambda: op.send("transfer_model", force=True),
                lambda: robot.slot.current.version == version,
                every=30,
                timeout=300,
            )
            row = server.store.version(version)
            assert row is not None
            assert sha256_file(rs.data_dir / "models" / "current.pt") == row.sha256
            stored = {r.region_id for r in server.store.list_regions(RID)}
        cand = sqlite_rows(rs.data_dir / "candidates" / "candidates.sqlite3")["candidates"]
        sent = {r[0] for r in cand if r[-1] == 1}
        assert sent and sent <= stored
        drops = proxy.stats.drops
    with capsys.disabled():
        print(
            f"\nloop over a dropping network: {drops} connection cuts, {len(stored)} regions, "
            f"model {version} active; sends per command {sends}"
        )
