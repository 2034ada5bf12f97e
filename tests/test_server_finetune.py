"""Start FineTune on the tiny model: rejections, progress, registration, cancel, crash recovery."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from ars.commands import annotate, send
from common.config import Settings
from models.checkpoint import load_checkpoint
from server_agent.agent import ServerAgent
from server_agent.figures import headline
from server_agent.finetune import RESTART_REASON
from server_agent.store import Store
from simulator.sets import SimulatorSets
from tests.helpers.brokers import BrokerHandle
from tests.helpers.server import (
    RID,
    TOPICS,
    make_region,
    manifest_payload,
    operator,
    region_payload,
    robot_peer,
    server_settings,
    tiny_checkpoint,
)


async def _send_regions(broker: BrokerHandle, n: int) -> list[str]:
    regions = [make_region(score=0.1 * (i + 1), seed=i) for i in range(n)]
    async with robot_peer(broker) as robot:
        for region in regions:
            await robot.link.publish(TOPICS.robot_regions(RID), region_payload(*region))
        ids = [h.region_id for h, _, _ in regions]
        await robot.link.publish(TOPICS.robot_regions(RID), manifest_payload(RID, "t1", ids))
        await robot.wait_for(lambda t, p: True if t.endswith("regions/ack") else None)
    return ids


async def _oracle_label(broker: BrokerHandle, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``ars annotate --oracle`` against the server; returns its summary line."""
    settings = Settings(mqtt=broker.mqtt("operator"))
    args = argparse.Namespace(oracle=True, robot=None, limit=0, timeout=15.0)
    assert await annotate.run(args, settings) == 0
    return capsys.readouterr().out


def _send_args(cmd: str, *, json_out: bool) -> argparse.Namespace:
    return argparse.Namespace(
        robot=RID, cmd=cmd, args='{"iterations": 2}' if cmd == "start_finetune" else "{}",
        force=False, wait=True, timeout=120.0, json=json_out,
    )  # fmt: skip


async def test_finetune_rejects_then_trains_and_registers_a_version(
    broker: BrokerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tiny_checkpoint(tmp_path / "base.pt")
    settings = server_settings(broker, tmp_path / "server", iterations=3)
    async with (
        operator(broker) as op,
        ServerAgent(settings, sets=SimulatorSets(), base_checkpoint=base) as server,
    ):
        await server.wait_connected()
        ev = await op.final(RID, "start_finetune")
        assert ev.kind == "rejected" and "no annotations" in ev.msg
        ev = await op.final(RID, "cancel_finetune")
        assert ev.kind == "rejected" and "no fine-tuning is running" in ev.msg

        await _send_regions(broker, 3)
        assert (await op.final(RID, "start_annotation")).kind == "done"
        out = await _oracle_label(broker, capsys)
        assert "labeled 3 of 3 regions" in out
        assert server.store.counts() == (3, 3)

        command = await op.command(RID, "start_finetune", iterations=4)
        done = await op.event(command.id, ("done", "failed", "rejected"), timeout=120)
        assert done.kind == "done", done.msg
        kinds = [e.kind for e in op.events() if e.ref == command.id]
        assert kinds[0] == "accepted" and kinds[-1] == "done"
        progress = [e for e in op.events() if e.ref == command.id and e.kind == "progress"]
        assert progress, "no progress events"
        last = progress[-1].data
        assert last["iterations"] == 4 and last["job_id"] == done.data["job_id"]
        assert set(last) >= {"robot_id", "iteration", "loss", "percent", "eta_s", "lr", "elapsed_s"}
        data = done.data
        assert len(data["losses"]) == 4 and all(loss > 0 for loss in data["losses"])
        measured = {"miou_rural", "miou_urban", "miou_regions"}
        assert set(data["metrics_before"]) == measured
        # after: also the forgetting guard's anchor (the base model's urban mIoU on the same
        # frames; the job's parent is the base here) and the share of the change it kept
        assert set(data["metrics_after"]) == measured | {"urban_base", "blend"}
        assert data["metrics_after"]["urban_base"] == data["metrics_before"]["miou_urban"]
        for metrics in (data["metrics_before"], data["metrics_after"]):
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
        version = data["version"]
        assert version == f"{RID}-v1"
        # registered: checkpoint file (fp16 by default), row with metrics and parent
        path = tmp_path / "server" / "models" / f"{version}.pt"
        _model, meta = load_checkpoint(path)
        assert meta.arch == "tiny" and meta.version == version and meta.dtype == "fp16"
        assert meta.metrics == pytest.approx(data["metrics_after"])
        reply, _ = await op.request("list_models")
        (info,) = reply["data"]["models"]
        assert info["version"] == version and info["parent"] == "base-tiny"
        assert info["robot_id"] == RID and info["bytes"] == path.stat().st_size
        assert info["metrics"] == pytest.approx(data["metrics_after"])
        assert server.store.job_state(data["job_id"]) == "done"
        assert server.finetune.status.state == "done"
        # the replay frames were distilled to the base model (server.distill_weight), which
        # the job left exactly as the checkpoint on disk
        assert settings.server.distill_weight > 0
        teacher, (shipped, _) = server.finetune._base_model(), load_checkpoint(base)
        assert teacher.state_dict().keys() == shipped.state_dict().keys()
        assert all(torch.equal(v, shipped.state_dict()[k]) for k, v in teacher.state_dict().items())

        # each figure names what it is measured on; the message leads with the best answer to
        # "how much better where the robot drives" (here: the labelled regions, none held out)
        figures = {f["key"]: f for f in data["figures"]}
        assert set(figures) == measured
        assert figures["miou_regions"]["evaluated_on"] == (
            "all 3 labelled regions of this robot, trained on"
        )
        assert "fixed simulator rural frames" in figures["miou_rural"]["evaluated_on"]
        assert figures["miou_urban"]["after"] == data["metrics_after"]["miou_urban"]
        assert done.msg.startswith(f"new model {version} in ")
        assert "labelled regions mIoU" in done.msg and "(all 3 labelled regions" in done.msg

        # `ars send --wait` prints the figures for a person, no loss list; --json the raw events
        capsys.readouterr()
        args = _send_args("start_finetune", json_out=False)
        assert await send.run(args, Settings(mqtt=broker.mqtt("operator"))) == 0
        out = capsys.readouterr().out
        assert f"new model {RID}-v2 in " in out and "losses" not in out, out
        lines = [line for line in out.splitlines() if "mIoU" in line and "->" in line]
        assert len(lines) >= 1 + len(figures), out  # the headline, then one line per figure
        assert any("rural frames" in line and "not the robot's route" in line for line in lines)
        args = _send_args("cancel_finetune", json_out=True)
        assert await send.run(args, Settings(mqtt=broker.mqtt("operator"))) == 1
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [e["kind"] for e in events][-1] == "rejected"
        assert all(e["cmd"] == "cancel_finetune" for e in events)


async def test_second_finetune_rejected_and_cancel_works(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    base = tiny_checkpoint(tmp_path / "base.pt")
    settings = server_settings(broker, tmp_path / "server")
    async with (
        operator(broker) as op,
        ServerAgent(settings, sets=SimulatorSets(), base_checkpoint=base) as server,
    ):
        await server.wait_connected()
        ids = await _send_regions(broker, 1)
        reply, _ = await op.request("submit_annotation", {"region_id": ids[0]}, [make_mask_png()])
        assert reply["ok"], reply
        command = await op.command(RID, "start_finetune", iterations=100_000)
        await op.event(command.id, ("progress",), timeout=60)
        second = await op.final(RID, "start_finetune")
        assert second.kind == "rejected" and "already running" in second.msg
        cancel = await op.final(RID, "cancel_finetune")
        assert cancel.kind == "done"
        ended = await op.event(command.id, ("done", "failed"), timeout=30)
        assert ended.kind == "failed" and ended.data["cancelled"] is True
        assert 0 < ended.data["iterations_done"] < 100_000
        job_id = ended.data["job_id"]
        assert server.store.job_state(job_id) == "cancelled"
        assert server.store.versions() == []
        assert server.finetune.status.state == "cancelled"
        assert not server.finetune.running(RID)


async def test_job_left_running_by_a_crash_is_failed_on_restart(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = server_settings(broker, tmp_path / "server")
    store = Store(tmp_path / "server")
    store.add_job("job1", RID, "cmd1")
    store.close()
    async with operator(broker) as op, ServerAgent(settings, sets=SimulatorSets()) as server:
        await server.wait_connected()
        ev = await op.event("cmd1", ("failed",))
        assert RESTART_REASON in ev.msg and ev.data == {"robot_id": RID, "job_id": "job1"}
        assert ev.cmd == "start_finetune"
        assert server.store.job_state("job1") == "failed"


def make_mask_png() -> bytes:
    import numpy as np

    from common.images import encode_png

    mask = np.full((24, 32), 255, dtype=np.uint8)
    mask[:, :16] = 9  # terrain
    mask[:, 16:] = 0  # road
    return encode_png(mask)


async def test_finetune_iterations_follow_the_labeled_pixels(
    broker: BrokerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No args.iterations: the training rule sets them from the labeled share of frames."""
    from models.adaptation import IterationRule

    base = tiny_checkpoint(tmp_path / "base.pt")
    settings = server_settings(
        broker, tmp_path / "server", iterations=2, iterations_per_frame=20, iterations_cap=40
    )
    async with (
        operator(broker) as op,
        ServerAgent(settings, sets=SimulatorSets(), base_checkpoint=base) as server,
    ):
        await server.wait_connected()
        await _send_regions(broker, 3)
        assert (await op.final(RID, "start_annotation")).kind == "done"
        assert "labeled 3 of 3 regions" in await _oracle_label(broker, capsys)
        rows = server.store.labeled_regions(RID)
        frames = sum(r.box[2] * r.box[3] / (r.frame_size[0] * r.frame_size[1]) for r in rows)
        expected = IterationRule(20, 2, 40)(frames)
        assert 2 < expected < 40  # neither the floor nor the cap decides here
        command = await op.command(RID, "start_finetune")
        accepted = await op.event(command.id, ("accepted",), timeout=30)
        assert accepted.data["iterations"] == expected
        done = await op.event(command.id, ("done", "failed"), timeout=120)
        assert done.kind == "done" and len(done.data["losses"]) == expected


def test_headline_says_what_share_of_the_change_the_guard_kept() -> None:
    rows = [{"name": "held-out regions", "before": 0.2, "after": 0.3, "evaluated_on": "8 regions"}]
    assert "guard" not in headline("v2", 12.0, rows, blend=1.0)
    assert "kept 87.5 % of the fine-tune's change" in headline("v2", 12.0, rows, blend=0.875)
    assert "kept 0 % of" in headline("v2", 12.0, rows, blend=0.0)
