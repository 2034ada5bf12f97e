"""The robot on onnxruntime: same logits as torch, torch when asked or when onnx fails, hot swap."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from common.errors import ModelError
from common.schemas import PreviewHeader
from models.onnx_session import probe_difference
from robot_agent.agent import RobotAgent
from robot_agent.model_store import load_verified
from robot_agent.runtime import Runtime, _cache_name
from tests.helpers.brokers import BrokerHandle
from tests.helpers.robot import Operator, preview_parts, robot_settings
from tests.test_robot_model import make_offer, send_model, tiny_bytes

INFER_HW = (60, 80)  # robot_settings' inference size


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A graph cache holding the tiny net's graph, exported once the robot's way (a child
    process running ``python -m models.onnx_graph``)."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    runtime = Runtime("onnx", cache=cache, threads=1, infer_hw=INFER_HW)
    graph = asyncio.run(runtime.graph("tiny", 19))
    assert graph[:2] and (cache / _cache_name("tiny", 19)).read_bytes() == graph
    return cache


async def test_onnx_runtime_gives_torchs_logits_and_runs_the_frames(
    broker: BrokerHandle, tmp_path: Path, graphs: Path
) -> None:
    settings = robot_settings(broker, tmp_path, runtime="onnx", onnx_cache=graphs)
    async with Operator(broker) as op, RobotAgent(settings) as robot:
        current = robot.slot.current
        assert current.runtime == "onnx" and current.onnx is not None
        assert probe_difference(current.onnx, current.model, INFER_HW) < 1e-3
        await op.wait(lambda: op.states())
        await op.answer(await op.send("start_segmentation"))
        await op.wait(lambda: len(op.of("preview")) >= 2)
        assert robot.worker.processed >= 2 and robot.worker.errors == 0


async def test_runtime_torch_keeps_torch_even_with_a_graph_at_hand(
    broker: BrokerHandle, tmp_path: Path, graphs: Path
) -> None:
    settings = robot_settings(broker, tmp_path, runtime="torch", onnx_cache=graphs)
    async with RobotAgent(settings) as robot:
        assert robot.runtime_ready.is_set()
        assert robot.slot.current.runtime == "torch"


async def test_auto_switches_to_onnx_in_the_background(
    broker: BrokerHandle, tmp_path: Path, graphs: Path
) -> None:
    settings = robot_settings(broker, tmp_path, runtime="auto", onnx_cache=graphs)
    async with RobotAgent(settings) as robot:
        await asyncio.wait_for(robot.runtime_ready.wait(), 60)
        assert robot.slot.current.runtime == "onnx"


async def test_auto_falls_back_to_torch_when_the_graph_fails(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    cache = tmp_path / "bad-cache"
    cache.mkdir()
    (cache / _cache_name("tiny", 19)).write_bytes(b"a torn or foreign file, not a graph")
    settings = robot_settings(broker, tmp_path, runtime="auto", onnx_cache=cache)
    async with RobotAgent(settings) as robot:
        await asyncio.wait_for(robot.runtime_ready.wait(), 60)
        assert robot.slot.current.runtime == "torch"
    onnx_only = robot_settings(broker, tmp_path, runtime="onnx", onnx_cache=cache)
    with pytest.raises(ModelError, match=r"robot\.runtime is onnx: ONNX graph does not parse"):
        async with RobotAgent(onnx_only):
            pass


async def test_without_onnxruntime_auto_runs_torch_and_onnx_refuses(
    tmp_path: Path, graphs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_verified(robot_settings_model(tmp_path), "cpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    auto = Runtime("auto", cache=graphs, threads=1, infer_hw=INFER_HW)
    assert (await auto.prepare(loaded)).runtime == "torch"
    only = Runtime("onnx", cache=graphs, threads=1, infer_hw=INFER_HW)
    with pytest.raises(ModelError, match="onnxruntime is not installed"):
        await only.prepare(loaded)


def robot_settings_model(tmp_path: Path) -> Path:
    from tests.helpers.robot import tiny_checkpoint

    return tiny_checkpoint(tmp_path / "m.pt", "base", seed=0)


async def test_hot_swap_and_rollback_on_onnx(
    broker: BrokerHandle, tmp_path: Path, graphs: Path
) -> None:
    settings = robot_settings(broker, tmp_path, runtime="onnx", onnx_cache=graphs)
    data = tiny_bytes("v2", seed=1)
    async with Operator(broker) as op, RobotAgent(settings) as robot:
        await op.wait(lambda: op.states())
        await op.answer(await op.send("start_segmentation"))
        await op.wait(lambda: op.of("preview"))
        await send_model(op, data, make_offer(data, "v2"))
        await op.status("v2", "active")
        current = robot.slot.current
        assert current.version == "v2" and current.onnx is not None
        assert probe_difference(current.onnx, current.model, INFER_HW) < 1e-3

        def versions() -> list[str]:
            return [
                PreviewHeader.model_validate(preview_parts(p)[0]).model_version
                for p in op.of("preview")
            ]

        await op.wait(lambda: "v2" in versions())  # later frames run the new model
        assert (await op.answer(await op.send("rollback"))).kind == "done"
        back = robot.slot.current
        assert back.version == "base" and back.onnx is not None
        assert probe_difference(back.onnx, back.model, INFER_HW) < 1e-3
        assert robot.worker.errors == 0


async def test_a_robot_waits_for_another_process_export_and_reuses_it(
    tmp_path: Path, graphs: Path
) -> None:
    import fcntl
    import os

    name = _cache_name("tiny", 19)
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    fd = os.open(cache / name.replace(".onnx", ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another process" is exporting
    try:
        runtime = Runtime("onnx", cache=cache, threads=1, infer_hw=INFER_HW)
        waiting = asyncio.create_task(runtime.graph("tiny", 19))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        (cache / name).write_bytes((graphs / name).read_bytes())  # its export lands
    finally:
        os.close(fd)  # and it lets go
    assert await asyncio.wait_for(waiting, 10) == (graphs / name).read_bytes()
