"""The whole loop, headless, on the embedded broker: both agents in-process, the simulator as
camera, the oracle as annotator.

start -> stop -> (robot restart) -> transfer data -> annotate -> (server restart) -> fine-tune
-> a corrupted copy of the new model (refused, old model keeps running) -> transfer model ->
rollback -> transfer again -> (robot restart). The robot must end on the new version, and that
version must beat the base on held-out rural frames, by the server's figures and by ours.
Figures are printed (``pytest -s``); docs/loop.md records them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

import pytest

from ars.commands import annotate
from common.config import Settings
from common.hashing import sha256_file
from robot_agent.agent import RobotAgent
from server_agent.agent import ServerAgent
from simulator.sets import SimulatorSets
from tests.helpers.brokers import BrokerHandle
from tests.helpers.loop import (
    FRAMES,
    RID,
    SERVER,
    Figures,
    LoopOperator,
    base_checkpoint,
    heldout_miou,
    inject_corrupt_copy,
    pretrain_seconds,
    robot_settings,
    round_metrics,
    server_settings,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return base_checkpoint(tmp_path_factory)


async def test_full_loop_on_the_embedded_broker(
    broker: BrokerHandle, tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fig = Figures("loop on the embedded broker (in-process agents)")
    fig.values["pretrain_seconds"] = pretrain_seconds(base)
    rs = robot_settings(broker.mqtt(f"robot-{RID}"), tmp_path / "robot", base)
    ss = server_settings(broker.mqtt("server"), tmp_path / "server", base)
    async with LoopOperator(broker) as op:
        # --- Start / Stop Segmentation, then a robot restart: the candidates stay ----------
        async with RobotAgent(rs) as robot:
            await op.robot_runs("base")
            with fig.stage("segmentation"):
                await op.run("start_segmentation")
                await op.until(lambda: robot.frames >= FRAMES)
                stopped = await op.run("stop_segmentation")
            unsent = robot.store.unsent_count
            assert unsent == stopped.data["candidates"] >= FRAMES
            fig.values["frames"] = robot.frames

        async with ServerAgent(ss, sets=SimulatorSets(), base_checkpoint=base) as server:
            await server.wait_connected()
            async with RobotAgent(rs) as robot:
                assert robot.store.unsent_count == unsent  # nothing lost in the restart
                state = await op.robot_runs("base")
                assert state.unsent_candidates == unsent

                # --- Transfer Data ----------------------------------------------------------
                with fig.stage("transfer_data"):
                    sent = await op.run("transfer_data")
                data = sent.data
                assert data["frames_considered"] == unsent
                assert data["regions"] == math.ceil(0.2 * unsent) and not data["rejected"]
                assert robot.store.unsent_count == 0
                assert server.store.counts() == (data["regions"], 0)
                assert data["ratio"] < 0.15  # a quarter of the pixels of a fifth of the frames
                again = await op.answer(await op.send("transfer_data"))
                assert again.kind == "rejected" and "no candidate" in again.msg
                fig.values["transfer"] = {
                    k: data[k]
                    for k in ("regions", "frames_considered", "bytes_sent", "image_bytes",
                              "full_frames_bytes", "ratio")
                }  # fmt: skip

            # --- Start Annotation, the oracle, Stop Annotation -----------------------------
            with fig.stage("annotation"):
                opened = await op.run("start_annotation")
                assert opened.data["total"] == data["regions"]
                capsys.readouterr()
                args = argparse.Namespace(oracle=True, robot=None, limit=0, timeout=15.0)
                assert await annotate.run(args, Settings(mqtt=broker.mqtt("operator"))) == 0
                out = capsys.readouterr().out
                assert f"labeled {data['regions']} of {data['regions']} regions" in out
                closed = await op.run("stop_annotation")
            assert closed.data["labeled"] == data["regions"]

        # --- a server restart: regions and annotations stay; Start FineTune ----------------
        async with (
            ServerAgent(ss, sets=SimulatorSets(), base_checkpoint=base) as server,
            RobotAgent(rs) as robot,
        ):
            await server.wait_connected()
            assert server.store.counts() == (data["regions"], data["regions"])
            await op.robot_runs("base")
            with fig.stage("finetune"):
                finetuned = await op.run("start_finetune", timeout=180)
            result = finetuned.data
            version = result["version"]
            before, after = result["metrics_before"], result["metrics_after"]
            assert after["miou_rural"] > before["miou_rural"] + 0.02, (before, after)
            assert len(result["losses"]) == SERVER["iterations"]
            progress = [e for e in op.all_events() if e.kind == "progress"]
            assert progress and progress[-1].data["iterations"] == SERVER["iterations"]
            fig.values["server_metrics_before"] = round_metrics(before)
            fig.values["server_metrics_after"] = round_metrics(after)
            fig.values["finetune_seconds_server"] = result["seconds"]

            # --- a corrupted copy: chunk dropped, old model keeps running ------------------
            row = server.store.versions(RID)[0]
            assert row.version == version
            checkpoint = server.store.model_path(version)
            mark = len(op.received)
            fields = {"version": version, "arch": row.arch, "dtype": row.dtype,
                      "metrics": row.metrics}  # fmt: skip
            await inject_corrupt_copy(op, checkpoint, fields, SERVER["chunk_size"])
            error = await op.until(
                lambda: [e for e in op.all_events(mark) if e.kind == "error" and "chunk 1" in e.msg]
            )
            assert "SHA-256" in error[0].msg and "dropped" in error[0].msg
            asking = await op.until(
                lambda: [s for s in op.statuses() if s.version == version and s.missing]
            )
            assert asking[0].state == "receiving" and asking[0].missing == [1]
            assert robot.slot.current.version == "base" and robot.updater.corrupt_chunks == 1
            running = op.states()[-1].model
            assert running is not None and running.version == "base"

            # --- Transfer Model: the server's copy completes it; the robot swaps ----------
            with fig.stage("transfer_model"):
                moved = await op.run("transfer_model")
            assert moved.data["version"] == version
            await op.status(version, "active")
            state = await op.robot_runs(version)
            assert state.previous_model is not None and state.previous_model.version == "base"
            assert robot.slot.current.version == version
            assert sha256_file(rs.data_dir / "models" / "current.pt") == row.sha256
            await op.until(lambda: server.store.robots().get(RID) == version)
            fig.values["model"] = {k: moved.data[k] for k in ("bytes", "chunks", "resent")}

            # --- rollback, recorded by the server; then the version can be sent again -----
            with fig.stage("rollback"):
                rolled = await op.run("rollback")
            assert rolled.data == {"from": version, "to": "base"}
            await op.status("base", "rolled_back")
            assert robot.slot.current.version == "base"
            await op.until(lambda: server.store.robots().get(RID) == "base")
            await op.robot_runs("base")
            resent = await op.run("transfer_model")
            assert resent.data["version"] == version
            await op.robot_runs(version)

        # --- a robot restart keeps the new model --------------------------------------------
        async with RobotAgent(rs) as robot:
            assert robot.slot.current.version == version
            state = await op.robot_runs(version)
            assert state.previous_model is not None and state.previous_model.version == "base"

    # --- independent check: the robot's checkpoint vs the base, on frames nobody saw ---------
    with fig.stage("heldout_eval"):
        base_miou = await asyncio.to_thread(heldout_miou, base)
        robot_miou = await asyncio.to_thread(heldout_miou, rs.data_dir / "models" / "current.pt")
    fig.values["heldout_base"] = round_metrics(base_miou)
    fig.values["heldout_robot"] = round_metrics(robot_miou)
    assert robot_miou["rural"] > base_miou["rural"] + 0.02, (base_miou, robot_miou)
    with capsys.disabled():
        print("\n" + fig.report())
