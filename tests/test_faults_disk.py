"""Faults: the server's data directory full (ENOSPC) or read-only.

The data directory is a real 2 MiB tmpfs mounted by the test (root is needed; without it the
tests skip, saying so), filled with a ballast file until the kernel says ENOSPC, or remounted
read-only (``chmod`` would not stop root). A region sent then is refused with an error event
naming the reason, no row or file of it appears, what was stored before is unchanged (rows and
files), SQLite's integrity check passes, and once space is back (or the mount is writable again)
the same region is stored and acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.schemas import RegionsAck
from server_agent.agent import ServerAgent
from simulator.sets import SimulatorSets
from tests.helpers.brokers import BrokerHandle
from tests.helpers.faults import tree_digest
from tests.helpers.server import (
    RID,
    TOPICS,
    Peer,
    make_region,
    manifest_payload,
    operator,
    region_payload,
    robot_peer,
    server_settings,
    tiny_checkpoint,
)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@contextlib.asynccontextmanager
async def tmpfs(path: Path, size: str = "2m") -> AsyncIterator[Path]:
    path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (set-up)
    try:
        await asyncio.to_thread(_mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}); disk faults not tested")
    try:
        yield path
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a ballast file until ENOSPC; returns it (delete it to free the space)."""
    ballast = path / "ballast.bin"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return ballast


async def send_region(robot: Peer, region_id: str, transfer_id: str) -> None:
    header, crop, mask = make_region(region_id=region_id, transfer_id=transfer_id)
    await robot.link.publish(TOPICS.robot_regions(RID), region_payload(header, crop, mask))
    await robot.link.publish(
        TOPICS.robot_regions(RID), manifest_payload(RID, transfer_id, [region_id])
    )


async def ack_for(robot: Peer, transfer_id: str, start: int) -> RegionsAck:
    def match(topic: str, payload: bytes) -> RegionsAck | None:
        if topic != TOPICS.robot_regions_ack(RID):
            return None
        ack = RegionsAck.model_validate_json(payload)
        return ack if ack.transfer_id == transfer_id else None

    return await robot.wait_for(match, 20, start)


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
async def test_server_data_dir_full_or_read_only(
    broker: BrokerHandle, tmp_path: Path, fault: str
) -> None:
    base = tiny_checkpoint(tmp_path / "base.pt")
    async with contextlib.AsyncExitStack() as stack:
        data = await stack.enter_async_context(tmpfs(tmp_path / "data"))
        regions = await stack.enter_async_context(tmpfs(data / "regions"))
        ss = server_settings(broker, data, base_model=base)
        async with (
            operator(broker) as op,
            robot_peer(broker) as robot,
            ServerAgent(ss, sets=SimulatorSets(), base_checkpoint=base) as server,
        ):
            await server.wait_connected()
            await send_region(robot, "before-1", "t0")
            assert "before-1" in (await ack_for(robot, "t0", 0)).stored
            before = tree_digest(data)
            mark_ev, mark_ack = len(op.received), len(robot.received)
            ballast = None
            if fault == "disk full":
                ballast = await asyncio.to_thread(fill, data)
                before = tree_digest(data, ignore=lambda p: p.name == "ballast.bin")
            else:  # the regions folder is its own tmpfs, remounted read-only (no file open there)
                await asyncio.to_thread(_mount, "-o", "remount,ro", str(regions))
            await send_region(robot, "during-1", "t1")
            ack = await ack_for(robot, "t1", mark_ack)
            # not stored, and not "rejected" either: the robot keeps it for its next transfer
            assert ack.stored == [] and ack.rejected == {}, ack
            error = await op.event(kinds=("error",), start=mark_ev)
            assert "during-1" in error.msg and error.level == "error"
            assert any(
                s in error.msg for s in ("No space left", "disk is full", "Read-only", "readonly")
            ), error.msg
            assert server.store.region_owner("during-1") is None
            # the server keeps answering requests while its disk is unusable
            reply, _ = await op.request("list_regions", {})
            assert reply["ok"] and [r["region_id"] for r in reply["data"]["regions"]] == [
                "before-1"
            ]
            # recovery: space back (or writable again), the same region is stored
            if ballast is not None:
                await asyncio.to_thread(ballast.unlink)
            else:
                await asyncio.to_thread(_mount, "-o", "remount,rw", str(regions))
            assert tree_digest(data, ignore=lambda p: p.name == "ballast.bin") == before
            assert integrity(data / "server.sqlite3") == "ok"
            mark_ack = len(robot.received)
            await send_region(robot, "during-1", "t2")
            assert (await ack_for(robot, "t2", mark_ack)).stored == ["during-1"]
            assert server.store.counts() == (2, 0)


async def test_server_refuses_to_start_on_a_read_only_data_dir(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    """A whole data directory read-only from the start: a StorageError naming it, or (when
    SQLite can still read) a server that refuses every write with an error event."""
    from common.errors import StorageError

    base = tiny_checkpoint(tmp_path / "base.pt")
    async with tmpfs(tmp_path / "data") as data:
        ss = server_settings(broker, data, base_model=base)
        async with ServerAgent(
            ss, sets=SimulatorSets(), base_checkpoint=base
        ) as server:  # a store with a region
            await server.wait_connected()
        before = tree_digest(data)
        await asyncio.to_thread(_mount, "-o", "remount,ro", str(data))
        try:
            with pytest.raises(StorageError, match=r"(?i)read-?only"):
                async with ServerAgent(ss, sets=SimulatorSets(), base_checkpoint=base):
                    pass
        finally:
            await asyncio.to_thread(_mount, "-o", "remount,rw", str(data))
        assert tree_digest(data) == before
