"""Model updates on the real broker: offer, chunks, verify, hot swap, persist, rollback, restart."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from common.chunking import split_chunks
from common.envelope import encode
from common.hashing import hmac_sha256, sha256_bytes, sha256_file
from common.schemas import ChunkHeader, ModelOffer, PreviewHeader
from models.checkpoint import checkpoint_bytes
from models.network import build_model
from robot_agent.agent import RobotAgent
from tests.helpers.brokers import BrokerHandle
from tests.helpers.robot import RID, Operator, preview_parts, robot_settings

CHUNK = 8 * 1024


def tiny_bytes(version: str, seed: int) -> bytes:
    torch.manual_seed(seed)
    return checkpoint_bytes(build_model("tiny"), arch="tiny", version=version)


def make_offer(
    data: bytes, version: str, *, sha: str | None = None, key: str | None = None
) -> ModelOffer:
    chunks = len(split_chunks(data, CHUNK))
    offer = ModelOffer(
        robot_id=RID,
        version=version,
        sha256=sha or sha256_bytes(data),
        bytes=len(data),
        chunk_size=CHUNK,
        chunks=chunks,
        arch="tiny",
    )
    if key is not None:
        offer = offer.model_copy(
            update={"signature": hmac_sha256(key.encode(), offer.signed_fields())}
        )
    return offer


async def send_chunks(
    op: Operator, data: bytes, version: str, *, only: set[int] | None = None, corrupt: int = -1
) -> None:
    for index, chunk in enumerate(split_chunks(data, CHUNK)):
        if only is not None and index not in only:
            continue
        header = ChunkHeader(version=version, index=index, sha256=sha256_bytes(chunk))
        body = bytes([chunk[0] ^ 0xFF]) + chunk[1:] if index == corrupt else chunk
        await op.publish("model/chunk", encode(header.model_dump(mode="json"), [body]))


async def send_model(op: Operator, data: bytes, offer: ModelOffer, **kw: object) -> None:
    await op.publish("model/offer", offer.to_json())
    await send_chunks(op, data, offer.version, **kw)  # type: ignore[arg-type]


async def test_update_while_segmenting_persists_and_survives_restart(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = robot_settings(broker, tmp_path)
    models = settings.data_dir / "models"
    data = tiny_bytes("v2", seed=1)
    offer = make_offer(data, "v2")
    assert offer.chunks >= 3
    async with Operator(broker) as op:
        async with RobotAgent(settings) as robot:
            await op.wait(lambda: op.states())
            await op.answer(await op.send("start_segmentation"))
            await op.wait(lambda: op.of("preview"))
            await send_model(op, data, offer)
            for state in ("receiving", "verified", "active"):
                await op.status("v2", state)
            assert robot.slot.current.version == "v2"
            assert robot.slot.current.sha256 == offer.sha256

            # later frames run the new model: previews say so (frames inferred before the swap
            # may still be in the pipeline, so wait for the first v2 one, then no more base)
            def versions() -> list[str]:
                return [
                    PreviewHeader.model_validate(preview_parts(p)[0]).model_version
                    for p in op.of("preview")
                ]

            await op.wait(lambda: "v2" in versions())
            seen = len(op.of("preview"))
            await op.wait(lambda: len(op.of("preview")) > seen)
            seq = versions()
            assert set(seq[seq.index("v2") :]) == {"v2"}  # never back to base
            state = await op.wait(
                lambda: [s for s in op.states() if s.model and s.model.version == "v2"]
            )
            assert state[-1].previous_model is not None
            assert state[-1].previous_model.version == "base"
            await op.answer(await op.send("stop_segmentation"))
        # persisted: current = v2, previous = the base it replaced, pointer in step
        assert sha256_file(models / "current.pt") == offer.sha256
        assert sha256_file(models / "previous.pt") == sha256_file(tmp_path / "base.pt")
        pointer = json.loads((models / "pointer.json").read_text())
        assert pointer["current"]["version"] == "v2"
        assert pointer["previous"]["version"] == "base"

        async with RobotAgent(settings) as robot:
            assert robot.slot.current.version == "v2"  # restart: the last good model
        (models / "current.pt").write_bytes(data[: len(data) // 2])  # torn or corrupt
        async with RobotAgent(settings) as robot:
            assert robot.slot.current.version == "base"  # falls back to previous.pt


async def test_rollback(broker: BrokerHandle, tmp_path: Path) -> None:
    settings = robot_settings(broker, tmp_path)
    data = tiny_bytes("v2", seed=1)
    async with Operator(broker) as op, RobotAgent(settings) as robot:
        await op.wait(lambda: op.states())
        none = await op.answer(await op.send("rollback"))
        assert none.kind == "rejected" and "no previous model" in none.msg

        await send_model(op, data, make_offer(data, "v2"))
        await op.status("v2", "active")
        ref = await op.send("rollback")
        done = await op.answer(ref)
        assert done.kind == "done" and done.data == {"from": "v2", "to": "base"}
        assert [e.kind for e in op.events() if e.ref == ref] == ["accepted", "done"]
        await op.status("base", "rolled_back")
        assert robot.slot.current.version == "base"
        state = await op.wait(
            lambda: [s for s in op.states() if s.model and s.model.version == "base"][1:]
        )
        assert state[-1].previous_model is not None
        assert state[-1].previous_model.version == "v2"
        # a second rollback goes back to the model rolled back from
        assert (await op.answer(await op.send("rollback"))).kind == "done"
        assert robot.slot.current.version == "v2"


async def test_corrupt_chunk_is_dropped_and_resent(broker: BrokerHandle, tmp_path: Path) -> None:
    settings = robot_settings(broker, tmp_path)
    data = tiny_bytes("v3", seed=2)
    offer = make_offer(data, "v3")
    async with Operator(broker) as op, RobotAgent(settings) as robot:
        await op.wait(lambda: op.states())
        await send_model(op, data, offer, corrupt=1)
        error = await op.wait(
            lambda: [e for e in op.events() if e.kind == "error" and "chunk 1" in e.msg]
        )
        assert "SHA-256" in error[0].msg and error[0].level == "error"
        # chunks stopped with one missing: after the resend timeout the robot lists it
        asking = await op.wait(
            lambda: [s for s in op.statuses() if s.state == "receiving" and s.missing]
        )
        assert asking[0].missing == [1] and asking[0].received == offer.chunks - 1
        assert robot.slot.current.version == "base"  # untouched meanwhile
        await send_chunks(op, data, "v3", only={1})  # the server resends it
        await op.status("v3", "active")
        assert robot.slot.current.version == "v3"


async def test_wrong_sha_and_bad_checkpoint_are_rejected(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = robot_settings(broker, tmp_path)
    data = tiny_bytes("v4", seed=3)
    junk = bytes(range(256)) * 100
    async with Operator(broker) as op, RobotAgent(settings) as robot:
        await op.wait(lambda: op.states())
        await send_model(op, data, make_offer(data, "v4", sha="0" * 64))
        rejected = await op.status("v4", "rejected")
        assert rejected.error is not None and "SHA-256" in rejected.error
        # intact transfer of bytes that are not a checkpoint: refused by the loader
        await send_model(op, junk, make_offer(junk, "v5"))
        bad = await op.status("v5", "rejected")
        assert bad.error is not None and "checkpoint" in bad.error
        assert robot.slot.current.version == "base"
        assert not (settings.data_dir / "models" / "current.pt").exists()
        assert not [s for s in op.statuses() if s.state == "active"]


async def test_signed_offers_only_when_a_model_key_is_set(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = robot_settings(broker, tmp_path).model_copy(update={"model_key": "s3cret"})
    data = tiny_bytes("v6", seed=4)
    async with Operator(broker) as op, RobotAgent(settings) as robot:
        await op.wait(lambda: op.states())
        await send_model(op, data, make_offer(data, "v6"))
        unsigned = await op.status("v6", "rejected")
        assert unsigned.error is not None and "unsigned" in unsigned.error
        await send_model(op, data, make_offer(data, "v6", key="wrong"))
        await op.wait(lambda: len([s for s in op.statuses() if s.state == "rejected"]) == 2)
        assert "signature" in (op.statuses()[-1].error or "")
        assert robot.slot.current.version == "base"
        await send_model(op, data, make_offer(data, "v6", key="s3cret"))
        await op.status("v6", "active")
        assert robot.slot.current.version == "v6"
