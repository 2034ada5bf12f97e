"""Start FineTune on the tiny model: rejections, progress, registration, cancel, crash recovery."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ars.commands import annotate
from common.config import Settings
from models.checkpoint import load_checkpoint
from server_agent.agent import ServerAgent
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
        for metrics in (data["metrics_before"], data["metrics_after"]):
            assert set(metrics) == {"miou_rural", "miou_urban", "miou_regions"}
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
