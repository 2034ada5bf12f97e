"""``ars robot`` as a process: last will when killed; obeys commands; stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.helpers.brokers import BrokerHandle
from tests.helpers.robot import RID, Operator, robot_settings

ROOT = Path(__file__).resolve().parent.parent


async def test_ars_robot_process_runs_and_stops_on_sigterm(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = robot_settings(broker, tmp_path)  # writes the camera folder and base.pt
    argv = [
        sys.executable, "-m", "ars.cli", "robot",
        "--broker", broker.url(f"robot-{RID}"),
        "--data-dir", str(tmp_path / "robot"),
        "--id", RID,
        "--source", f"folder:{tmp_path / 'camera'}",
        "--model", str(settings.robot.model),
        "--size", "160x120",
        "--infer-size", "80x60",
        "--threads", "1",
        "--device", "cpu",
        "--runtime", "torch",
        "--preview-fps", "10",
    ]  # fmt: skip
    async with Operator(broker) as op:
        # killed outright: the broker publishes the robot's last will (retained, offline)
        killed = await asyncio.create_subprocess_exec(*argv, cwd=ROOT)
        try:
            await op.wait(lambda: [s for s in op.states() if s.online], timeout=60)
        finally:
            killed.kill()
            await killed.wait()
        will = await op.wait(lambda: op.states()[-1].online is False and op.states(), timeout=10)
        assert will[-1].robot_id == RID and not will[-1].segmenting
        op.received.clear()

        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            online = await op.wait(lambda: [s for s in op.states() if s.online], timeout=60)
            assert online[0].source == f"folder:{tmp_path / 'camera'}"
            ref = await op.send("start_segmentation")
            assert (await op.answer(ref)).kind == "done"
            await op.wait(lambda: op.of("preview"))
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()
        assert f"robot {RID}: source folder:" in out.decode()
        assert broker.creds.passwords[f"robot-{RID}"] not in out.decode()
        await op.wait(lambda: op.states()[-1].online is False, timeout=5)
        assert (tmp_path / "robot" / "candidates" / "candidates.sqlite3").exists()
