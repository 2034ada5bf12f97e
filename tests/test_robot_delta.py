"""Model updates as deltas, end to end on the embedded broker with the tiny net: the server
sends the difference from the robot's model, the robot rebuilds the exact weights; a robot
with another parent gets the whole checkpoint; a delta that rebuilds other weights is refused
and the running model kept; reception goes to disk as it arrives."""

from __future__ import annotations

import asyncio
import time
import zlib
from pathlib import Path

import pytest

from common.chunking import split_chunks
from common.envelope import decode, encode
from common.errors import TransferError
from common.hashing import sha256_bytes, sha256_file
from common.schemas import ModelOffer
from models.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from models.delta import encode_delta
from models.network import SegNet
from robot_agent.agent import RobotAgent
from robot_agent.chunk_file import ChunkFile
from server_agent.agent import ServerAgent
from server_agent.store import Store, VersionRow
from simulator.sets import SimulatorSets
from tests.helpers.brokers import BrokerHandle
from tests.helpers.robot import RID, Operator, robot_settings
from tests.helpers.server import operator, server_settings
from tests.test_models_delta import finetuned_pair
from tests.test_robot_model import send_chunks

VERSION = f"{RID}-v1"


def save(model: SegNet, path: Path, version: str) -> CheckpointMeta:
    return save_checkpoint(path, model, arch="tiny", version=version, dtype="fp16")


def register(root: Path, child: SegNet) -> CheckpointMeta:
    """The fine-tuned child as a finished job registers it (parent: the base)."""
    store = Store(root)
    try:
        path = store.model_path(VERSION)
        meta = save(child, path, VERSION)
        store.add_version(
            VersionRow(
                version=VERSION, robot_id=RID, created=time.time(), sha256=sha256_file(path),
                bytes=path.stat().st_size, arch="tiny", dtype="fp16",
                metrics={"miou_rural": 0.5}, metrics_before={"miou_rural": 0.4}, parent="base",
            )
        )  # fmt: skip
    finally:
        store.close()
    return meta


async def transfer(broker: BrokerHandle, tmp_path: Path, robot_base_seed: int) -> None:
    """Server base = the parent (seed 0); the robot runs a "base" of ``robot_base_seed``."""
    parent, child = finetuned_pair(seed=0)
    if robot_base_seed != 0:
        parent_of_robot, _ = finetuned_pair(seed=robot_base_seed, iterations=0)
    else:
        parent_of_robot = parent
    server_base = save(parent, tmp_path / "server-base.pt", "base").weights_sha256
    save(parent_of_robot, tmp_path / "base.pt", "base")
    meta = register(tmp_path / "server", child)
    rs = robot_settings(broker, tmp_path)
    ss = server_settings(broker, tmp_path / "server")
    async with (
        operator(broker) as op,
        Operator(broker) as rop,
        RobotAgent(rs) as robot,
        ServerAgent(
            ss, sets=SimulatorSets(), base_checkpoint=tmp_path / "server-base.pt"
        ) as server,
    ):
        await server.wait_connected()
        for _ in range(100):  # the server has read the robot's state: it knows its model
            if server.store.robots().get(RID) == "base":
                break
            await asyncio.sleep(0.05)
        done = await op.final(RID, "transfer_model", timeout=60, force=True)
        assert done.kind == "done", done.msg
        offers = [ModelOffer.model_validate_json(m.payload) for m in rop.of("model/offer")]
        assert offers[0].is_delta and offers[0].parent_sha256 == server_base
        assert offers[0].bytes < offers[0].full_bytes  # type: ignore[operator]
        if robot_base_seed == 0:
            assert done.data["encoding"] == "delta" and len(offers) == 1
            assert done.data["bytes"] == offers[0].bytes < done.data["full_bytes"]
        else:  # another parent: the robot asks for the checkpoint, the same transfer sends it
            assert rop.statuses()[0].state == "need_full"
            assert "other weights than the running model" in (rop.statuses()[0].error or "")
            assert done.data["encoding"] == "full" and [o.is_delta for o in offers] == [True, False]
            assert offers[1].sha256 == sha256_file(server.store.model_path(VERSION))
        # the robot runs, and has persisted, exactly the registered weights
        assert robot.slot.current.version == VERSION
        assert robot.slot.current.meta.weights_sha256 == meta.weights_sha256
        models = rs.data_dir / "models"
        _, on_disk = read_checkpoint(models / "current.pt")
        assert on_disk.weights_sha256 == meta.weights_sha256
        assert robot.slot.current.sha256 == sha256_file(models / "current.pt")
        assert not list(models.glob(".incoming-*"))


async def test_delta_update_rebuilds_the_exact_weights(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    await transfer(broker, tmp_path, robot_base_seed=0)


async def test_a_robot_without_the_parent_gets_the_whole_checkpoint(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    await transfer(broker, tmp_path, robot_base_seed=1)


async def test_a_delta_that_rebuilds_other_weights_is_refused_and_the_model_kept(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    parent, child = finetuned_pair(seed=0)
    pmeta = save(parent, tmp_path / "base.pt", "base")
    cmeta = save(child, tmp_path / "child.pt", "v2")
    pw, _ = read_checkpoint(tmp_path / "base.pt")
    cw, _ = read_checkpoint(tmp_path / "child.pt")
    env = decode(good := encode_delta(pw, pmeta, cw, cmeta), max_bytes=len(good))
    diff = bytearray(zlib.decompress(env.parts[0]))
    diff[len(diff) // 2] ^= 0x04  # one weight off; the payload's own SHA-256 says it is intact
    data = encode(env.header, [zlib.compress(bytes(diff)), env.parts[1]])
    offer = ModelOffer(
        robot_id=RID, version="v2", sha256=sha256_bytes(data), bytes=len(data), chunk_size=8192,
        chunks=len(split_chunks(data, 8192)), arch="tiny", dtype="fp16", encoding="delta",
        parent_version="base", parent_sha256=pmeta.weights_sha256,
        weights_sha256=cmeta.weights_sha256, full_bytes=(tmp_path / "child.pt").stat().st_size,
    )  # fmt: skip
    rs = robot_settings(broker, tmp_path)
    async with Operator(broker) as op, RobotAgent(rs) as robot:
        await op.wait(lambda: op.states())
        await op.publish("model/offer", offer.to_json())
        for index, chunk in enumerate(split_chunks(data, 8192)):
            header = {"version": "v2", "index": index, "sha256": sha256_bytes(chunk)}
            await op.publish("model/chunk", encode({"type": "chunk", **header}, [chunk]))
        status = await op.status("v2", "need_full")
        assert "rebuilt weights of v2 have SHA-256" in (status.error or "")
        assert "the offer promises" in (status.error or "")
        errors = await op.wait(lambda: [e for e in op.events() if e.level == "error"])
        assert (
            "delta refused" in errors[-1].msg
            and "asking for the whole checkpoint" in errors[-1].msg
        )
        assert robot.slot.current.version == "base"
        assert robot.slot.current.meta.weights_sha256 == pmeta.weights_sha256
        assert not (rs.data_dir / "models" / "current.pt").exists()
        assert not list((rs.data_dir / "models").glob(".incoming-*"))
        assert "active" not in [s.state for s in op.statuses()]


async def test_a_full_offer_from_before_deltas_still_installs(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    """A full offer's JSON and signed bytes are those of the schema before the delta fields."""
    _, child = finetuned_pair(seed=0)
    save(child, tmp_path / "child.pt", "v2")
    data = (tmp_path / "child.pt").read_bytes()
    offer = ModelOffer(
        robot_id=RID, version="v2", sha256=sha256_bytes(data), bytes=len(data), chunk_size=8192,
        chunks=len(split_chunks(data, 8192)), arch="tiny",
    )  # fmt: skip
    assert b"encoding" not in offer.to_json() and b"parent" not in offer.signed_fields()
    rs = robot_settings(broker, tmp_path)
    async with Operator(broker) as op, RobotAgent(rs) as robot:
        await op.wait(lambda: op.states())
        await op.publish("model/offer", offer.to_json())
        await send_chunks(op, data, "v2")  # 8 KiB chunks
        await op.status("v2", "active")
        assert robot.slot.current.sha256 == offer.sha256
        assert sha256_file(rs.data_dir / "models" / "current.pt") == offer.sha256


def test_reception_streams_to_disk_with_a_running_hash(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40 + b"tail"  # 10244 bytes: 3 chunks of 4096, the last short
    chunks = split_chunks(data, 4096)
    path = tmp_path / ".incoming-v2.full.part"
    sink = ChunkFile(
        path, total_bytes=len(data), chunk_size=4096, chunks=3, sha256=sha256_bytes(data)
    )
    assert sink.add(2, chunks[2], sha256_bytes(chunks[2]))  # out of order: waits for 0 and 1
    assert sink.add(0, chunks[0], sha256_bytes(chunks[0]))
    on_disk = path.read_bytes()  # written where they belong before the payload is complete
    assert on_disk[:4096] == chunks[0] and on_disk[8192:] == chunks[2]
    assert sink.missing() == [1] and not sink.complete
    with pytest.raises(TransferError, match="SHA-256"):
        sink.add(1, chunks[1][::-1], sha256_bytes(chunks[1]))
    with pytest.raises(TransferError, match="bytes"):
        sink.add(1, chunks[1][:-1], sha256_bytes(chunks[1][:-1]))
    assert sink.add(1, chunks[1], sha256_bytes(chunks[1]))
    assert not sink.add(1, chunks[1], sha256_bytes(chunks[1]))  # a QoS 1 duplicate
    assert sink.finish() == path and path.read_bytes() == data
    sink.discard()
    assert not path.exists()

    wrong = ChunkFile(path, total_bytes=4, chunk_size=4096, chunks=1, sha256="0" * 64)
    wrong.add(0, b"abcd", sha256_bytes(b"abcd"))
    with pytest.raises(TransferError, match="payload fails its SHA-256"):
        wrong.finish()
    wrong.discard()
    with pytest.raises(TransferError, match="inconsistent"):
        ChunkFile(path, total_bytes=10, chunk_size=4, chunks=2, sha256="0" * 64)
