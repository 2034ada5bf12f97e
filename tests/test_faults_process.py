"""Faults: processes killed with SIGKILL (robot during a model swap, server during fine-tuning).

The killed agent runs as ``python -m ars.cli robot|server`` (as deployed), so SIGKILL leaves
its files exactly as a power cut would (minus the page cache). The robot is killed the moment
it reports ``verified`` (it is then loading, dry-running, persisting and swapping); on restart
it must run a model whose file matches the SHA-256 its pointer records: the old one or the new
one, never a torn file. Every intermediate disk state of ``ModelFiles.install`` is also built
by hand and started from, since a SIGKILL lands in one of them only by chance.

The server is killed while a fine-tune job runs; on restart the job is reported ``failed``
(with the command id it answered), regions, annotations and model versions are unchanged row
for row and file for file, SQLite's integrity check passes, and a new job runs to ``done``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from common.hashing import sha256_file
from common.schemas import Event
from models.checkpoint import load_checkpoint
from robot_agent.agent import RobotAgent
from robot_agent.model_store import ModelFiles
from server_agent.agent import ServerAgent
from server_agent.finetune import RESTART_REASON
from simulator.sets import SimulatorSets
from tests.helpers.brokers import BrokerHandle
from tests.helpers.faults import (
    end,
    labeled_regions,
    register_version,
    spawn_cli,
    sqlite_rows,
    tree_digest,
)
from tests.helpers.loop import LoopOperator
from tests.helpers.robot import robot_settings
from tests.helpers.server import RID, tiny_checkpoint

pytestmark = pytest.mark.slow


def robot_argv(broker: BrokerHandle, data_dir: Path, base: Path, camera: Path) -> list[str]:
    return [
        "robot",
        "--broker",
        broker.url(f"robot-{RID}"),
        "--data-dir",
        str(data_dir),
        "--id",
        RID,
        "--source",
        f"folder:{camera}",
        "--model",
        str(base),
        "--size",
        "160x120",
        "--infer-size",
        "80x60",
        "--camera-fps",
        "5",
        "--preview-fps",
        "0",
        "--runtime",
        "torch",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]


def running_is_good(data_dir: Path, version: str, sha: str, base_sha: str) -> str:
    """The version a robot restarted from ``data_dir`` would run, checked against its file."""
    files = ModelFiles(data_dir / "models")
    loaded = (
        files.load_last_good(Path("/nonexistent-fallback.pt"), "cpu")
        if (files.current.exists() or files.previous.exists())
        else None
    )
    if loaded is None:
        return "base"
    assert loaded.sha256 in (sha, base_sha), "the robot would run a model nobody sent"
    return loaded.version


async def test_robot_sigkill_during_model_swap_runs_last_good_model(
    broker: BrokerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rs = robot_settings(broker, tmp_path)  # writes the camera folder and base.pt
    base = rs.robot.model
    assert base is not None
    base_sha = sha256_file(base)
    row = register_version(tmp_path / "server", "rover1-v1")
    data_dir = tmp_path / "robot-proc"
    argv = robot_argv(broker, data_dir, base, tmp_path / "camera")
    log = tmp_path / "robot.log"
    outcomes = []
    async with (
        LoopOperator(broker) as op,
        ServerAgent(
            robot_settings_server(broker, tmp_path), sets=SimulatorSets(), base_checkpoint=base
        ) as server,
    ):
        await server.wait_connected()
        proc = await spawn_cli(argv, log)
        try:
            await op.robot_runs("base", timeout=120)
            await swap_started(op, proc, row.version, log)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            await end(proc)
        killed_at = [s.state for s in op.statuses() if s.version == row.version]
        outcomes.append(running_is_good(data_dir, row.version, row.sha256, base_sha))
        # restart: it comes back online on a good model (old or new), and can then take the new
        old_starts = {s.started for s in op.states()}
        proc = await spawn_cli(argv, log)
        try:
            # the new process's state (the old one's retained "online" may still be the last)
            state = await op.until(
                lambda: (
                    (s := op.states())
                    and s[-1].online
                    and s[-1].started not in old_starts
                    and s[-1]
                ),
                120,
            )
            assert state.model is not None and state.model.version in ("base", row.version)
            assert state.model.sha256 in (base_sha, row.sha256)
            if state.model.version != row.version:
                answer = await op.answer(await op.send("transfer_model"), timeout=120)
                for _ in range(10):  # the server may take the command before that same state
                    if answer.kind != "rejected" or "being transferred" not in answer.msg:
                        break
                    await asyncio.sleep(0.5)
                    answer = await op.answer(await op.send("transfer_model"), timeout=120)
                assert answer.kind == "done", f"transfer_model: {answer.kind}: {answer.msg}"
            await op.robot_runs(row.version, timeout=120)
        finally:
            await end(proc)
    assert sha256_file(data_dir / "models" / "current.pt") == row.sha256
    with capsys.disabled():
        print(f"\nrobot SIGKILL after statuses {killed_at}: restarted on {outcomes[0]}")


async def swap_started(
    op: LoopOperator, proc: asyncio.subprocess.Process, version: str, log: Path
) -> None:
    """Send Transfer Model until the robot says ``verified`` (or already ``active``) for
    ``version``: the moment to kill it. A transfer the server reports failed (e.g. the robot
    said nothing within the server's idle timeout on a starved machine) is sent again, at most
    three times; on a timeout the robot's log and the statuses seen are in the message."""
    for _ in range(3):
        ref = await op.send("transfer_model")

        def outcome(ref: str = ref) -> str | None:
            if proc.returncode is not None:
                return "exited"
            # by version, not by position: statuses are a sub-list of all messages received
            if any(s.version == version and s.state in ("verified", "active")
                   for s in op.statuses()):  # fmt: skip
                return "swapping"
            answers = [e for e in op.all_events() if e.ref == ref]
            if any(e.kind in ("failed", "rejected") for e in answers):
                return "again"
            return None

        try:
            seen = await op.until(outcome, timeout=180)
        except TimeoutError:
            statuses = [(s.version, s.state) for s in op.statuses()]
            tail = await asyncio.to_thread(log_tail, log)
            pytest.fail(f"no verified status in 180 s; statuses {statuses}; robot log:\n{tail}")
        if seen != "again":
            return
        await asyncio.sleep(1.0)
    pytest.fail(f"transfer_model of {version} failed three times: {op.all_events()[-3:]}")


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def robot_settings_server(broker: BrokerHandle, tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.helpers.server import server_settings

    return server_settings(broker, tmp_path / "server", chunk_size=4096)


@pytest.mark.parametrize(
    "crash_point",
    ["temp file written", "previous replaced", "current replaced", "pointer written"],
)
async def test_every_crash_point_of_a_model_install_starts_on_a_good_model(
    broker: BrokerHandle, tmp_path: Path, crash_point: str
) -> None:
    """The disk as ``ModelFiles.install`` leaves it after each step; a robot starts from it."""
    rs = robot_settings(broker, tmp_path)
    old = tiny_checkpoint(tmp_path / "old.pt", version="old", seed=1)
    new = tiny_checkpoint(tmp_path / "new.pt", version="new", seed=2)
    models = rs.data_dir / "models"
    async with RobotAgent(rs) as robot:  # base -> old, installed properly
        data = old.read_bytes()
        model, meta = load_checkpoint(data)
        from robot_agent.inference import LoadedModel

        loaded = LoadedModel(model=model, meta=meta, sha256=sha256_file(old))
        robot.slot.swap(robot.files.install(data, loaded, robot.slot.current))
    pointer = (models / "pointer.json").read_bytes()
    steps = ["temp file written", "previous replaced", "current replaced", "pointer written"]
    upto = steps.index(crash_point)
    (models / ".current.crash.tmp").write_bytes(new.read_bytes()[:5000])  # a torn temp file
    if upto >= 1:
        shutil.copyfile(models / "current.pt", models / "previous.pt")
        os.replace(models / "current.pt", models / ".moved")
    if upto >= 2:
        shutil.copyfile(new, models / "current.pt")
    if upto >= 3:
        files = ModelFiles(models)
        nm, nmeta = load_checkpoint(new.read_bytes())
        files._write_pointer(
            LoadedModel(model=nm, meta=nmeta, sha256=sha256_file(new)),
            {"version": "old", "sha256": sha256_file(old), "arch": "tiny"},
        )
    else:
        (models / "pointer.json").write_bytes(pointer)
    (models / ".moved").unlink(missing_ok=True)
    async with RobotAgent(rs) as robot:
        running = robot.slot.current
        expected = {
            "temp file written": "old",
            "previous replaced": "old",
            "current replaced": "old",
            "pointer written": "new",
        }[crash_point]
        # "previous replaced": current.pt is gone, previous.pt is the old model (the last good)
        assert running.version == expected, (crash_point, running.version)
        assert running.sha256 == sha256_file(old if expected == "old" else new)


async def test_server_sigkill_during_finetune(
    broker: BrokerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "server"
    base = tiny_checkpoint(tmp_path / "base.pt", version="base")
    register_version(data_dir, "rover1-v1")
    labeled_regions(data_dir, 4)
    db = data_dir / "server.sqlite3"
    kept = ("regions", "annotations", "model_versions")

    def stored() -> dict[str, object]:
        rows = sqlite_rows(db)
        files = tree_digest(data_dir, ignore=lambda p: p.suffix.startswith(".sqlite3"))
        return {"rows": {t: rows[t] for t in kept}, "files": files}

    before = stored()
    argv = [
        "server",
        "--broker",
        broker.url("server"),
        "--data-dir",
        str(data_dir),
        "--base-model",
        str(base),
        "--threads",
        "1",
        "--eval-frames",
        "2",
        "--replay-frames",
        "2",
    ]
    env = {
        "ARS_SERVER__TRAIN_WIDTH": "64",
        "ARS_SERVER__TRAIN_HEIGHT": "48",
        "ARS_SERVER__BATCH_SIZE": "2",
    }
    log = tmp_path / "server.log"
    async with LoopOperator(broker) as op:
        proc = await spawn_cli(argv, log, env)
        try:
            await op.until(
                lambda: any(
                    t == "ars/server/state" and b'"online":true' in p for t, p in op.received
                ),
                timeout=120,
            )
            first = await op.send("start_finetune", iterations=100000)
            await op.until(
                lambda: [e for e in op.all_events() if e.kind == "progress" and e.ref == first],
                timeout=120,
            )
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            await end(proc)
        assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert stored() == before
        assert [r[3] for r in sqlite_rows(db)["jobs"]] == ["running"]
        proc = await spawn_cli(argv, log, env)
        try:
            failed: Event = await op.answer(first, timeout=120)
            assert failed.kind == "failed" and RESTART_REASON in failed.msg
            done = await op.run("start_finetune", timeout=240, iterations=3)
            version = done.data["version"]
        finally:
            await end(proc)
    jobs = sorted(r[3] for r in sqlite_rows(db)["jobs"])
    assert jobs == ["done", "failed"]
    after = stored()
    assert after["rows"]["regions"] == before["rows"]["regions"]  # type: ignore[index]
    assert after["rows"]["annotations"] == before["rows"]["annotations"]  # type: ignore[index]
    versions = [r[0] for r in sqlite_rows(db)["model_versions"]]
    assert sorted(versions) == sorted(["rover1-v1", version])
    assert load_checkpoint(data_dir / "models" / f"{version}.pt")[1].version == version
    with capsys.disabled():
        print(f"\nserver SIGKILL during fine-tuning: job failed on restart, new job {version} done")
