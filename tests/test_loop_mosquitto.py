"""The same loop against a real Mosquitto, closest to deployment: ``ars server``, ``ars robot``
and ``ars annotate --oracle`` as processes, every button pressed with a plain ``mosquitto_pub``
exactly as docs/protocol.md shows (no command id), the answers read from the event topics.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from common.hashing import sha256_file
from common.schemas import Event, ServerState
from tests.helpers.brokers import BrokerHandle
from tests.helpers.loop import (
    FRAMES,
    RID,
    SERVER,
    TOPICS,
    Figures,
    LoopOperator,
    agent_env,
    base_checkpoint,
    heldout_miou,
    pretrain_seconds,
    robot_argv,
    round_metrics,
    server_argv,
)

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return base_checkpoint(tmp_path_factory)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARS_")}
    env.update(agent_env())
    return env


@asynccontextmanager
async def ars_process(args: list[str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m ars.cli ARGS`` with output to ``log``; SIGTERM on exit, which must end it
    cleanly (exit 0)."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ars.cli", *args, cwd=ROOT, env=_env(), stdout=out, stderr=out
        )
        try:
            yield proc
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
            if code != 0:
                output = await asyncio.to_thread(log.read_text)
                pytest.fail(f"{args[0]} exited {code}: {output[-2000:]}")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


class Buttons:
    """Presses buttons with ``mosquitto_pub``, as an operator at a shell would."""

    def __init__(self, broker: BrokerHandle, op: LoopOperator) -> None:
        self.op = op
        binary = shutil.which("mosquitto_pub")
        if binary is None:
            pytest.fail("mosquitto_pub is not installed: apt-get install mosquitto-clients")
        self.base = [
            binary, "-h", "127.0.0.1", "-p", str(broker.port), "-u", "operator", "-I", "operator:",
            "-P", broker.creds.passwords["operator"], "-q", "1", "-t", TOPICS.robot_cmd(RID),
        ]  # fmt: skip

    async def press(self, cmd: str, payload: str | None = None, timeout: float = 30.0) -> Event:
        """Publish ``{"v":1,"cmd":CMD}`` (or ``payload``); return its final answer (done)."""
        mark = len(self.op.received)
        message = payload or f'{{"v":1,"cmd":"{cmd}"}}'
        proc = await asyncio.create_subprocess_exec(
            *self.base, "-m", message, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        answer = await self.op.answer(cmd=cmd, start=mark, timeout=timeout)
        assert answer.kind == "done", f"{cmd}: {answer.kind}: {answer.msg}"
        return answer


async def test_full_loop_on_mosquitto_driven_by_mosquitto_pub(
    mosquitto: BrokerHandle, tmp_path: Path, base: Path
) -> None:
    fig = Figures("loop on Mosquitto 2 (ars processes, mosquitto_pub buttons)")
    fig.values["pretrain_seconds"] = pretrain_seconds(base)
    robot_dir, server_dir = tmp_path / "robot", tmp_path / "server"
    async with LoopOperator(mosquitto) as op:
        async with (
            ars_process(server_argv(mosquitto, server_dir, base), tmp_path / "server.log"),
            ars_process(robot_argv(mosquitto, robot_dir, base), tmp_path / "robot.log"),
        ):

            def server_online() -> bool:
                states = [p for t, p in op.received if t == TOPICS.server_state]
                return bool(states) and ServerState.model_validate_json(states[-1]).online

            await op.until(server_online, timeout=90)
            await op.robot_runs("base", timeout=90)
            buttons = Buttons(mosquitto, op)

            with fig.stage("segmentation"):
                await buttons.press("start_segmentation")
                await op.until(lambda: op.states()[-1].frames >= FRAMES)
                stopped = await buttons.press("stop_segmentation")
            frames = stopped.data["candidates"]
            with fig.stage("transfer_data"):
                sent = (await buttons.press("transfer_data")).data
            assert sent["frames_considered"] == frames and sent["regions"] == -(-frames // 5)
            keys = ("regions", "frames_considered", "bytes_sent", "full_frames_bytes", "ratio")
            fig.values["transfer"] = {k: sent[k] for k in keys}

            with fig.stage("annotation"):
                opened = await buttons.press("start_annotation")
                assert opened.data["total"] == sent["regions"]
                oracle = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "ars.cli", "annotate", "--oracle",
                    "--broker", mosquitto.url("operator"),
                    cwd=ROOT, env=_env(), stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await asyncio.wait_for(oracle.communicate(), 60)
                assert oracle.returncode == 0, err.decode()[-2000:]
                n = sent["regions"]
                assert f"labeled {n} of {n} regions" in out.decode()
                closed = await buttons.press("stop_annotation")
            assert closed.data["labeled"] == n

            with fig.stage("finetune"):
                finetuned = await buttons.press(
                    "start_finetune",
                    f'{{"v":1,"cmd":"start_finetune","args":{{"iterations":{SERVER["iterations"]}}}}}',
                    timeout=180,
                )
            result = finetuned.data
            version = result["version"]
            before, after = result["metrics_before"], result["metrics_after"]
            assert after["miou_rural"] > before["miou_rural"] + 0.02, (before, after)
            fig.values["server_metrics_before"] = round_metrics(before)
            fig.values["server_metrics_after"] = round_metrics(after)

            with fig.stage("transfer_model"):
                moved = await buttons.press("transfer_model")
            assert moved.data["version"] == version
            await op.status(version, "active")
            state = await op.robot_runs(version)
            assert state.previous_model is not None and state.previous_model.version == "base"
            current = robot_dir / "models" / "current.pt"
            assert sha256_file(current) == sha256_file(server_dir / "models" / f"{version}.pt")
            with fig.stage("heldout_eval"):
                base_miou = await asyncio.to_thread(heldout_miou, base)
                robot_miou = await asyncio.to_thread(heldout_miou, current)
            fig.values["heldout_base"] = round_metrics(base_miou)
            fig.values["heldout_robot"] = round_metrics(robot_miou)
            assert robot_miou["rural"] > base_miou["rural"] + 0.02, (base_miou, robot_miou)

            with fig.stage("rollback"):
                rolled = await buttons.press("rollback")
            assert rolled.data == {"from": version, "to": "base"}
            await op.robot_runs("base")
        # both processes ended on SIGTERM with exit 0; the robot said goodbye (retained)
        await op.until(lambda: op.states()[-1].online is False, timeout=10)
    print("\n" + fig.report())
