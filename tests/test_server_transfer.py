"""Transfer Model: nothing new rejected, chunks + resend to a minimal receiver, the gate."""

from __future__ import annotations

import time
from pathlib import Path

from common.chunking import ChunkAssembler
from common.envelope import decode
from common.hashing import hmac_sha256, sha256_bytes, sha256_file
from common.schemas import ChunkHeader, ModelOffer, ModelRef, ModelStatus, RobotState
from server_agent.agent import ServerAgent
from server_agent.store import Store, VersionRow
from simulator.sets import SimulatorSets
from tests.helpers.brokers import BrokerHandle
from tests.helpers.server import (
    RID,
    TOPICS,
    Peer,
    operator,
    robot_peer,
    server_settings,
    tiny_checkpoint,
)


def register(root: Path, version: str, rural: float, rural_before: float, seed: int = 0) -> Path:
    """A registered version (checkpoint file + row), as a finished fine-tune leaves it."""
    store = Store(root)
    path = tiny_checkpoint(store.model_path(version), version=version, seed=seed)
    store.add_version(
        VersionRow(
            version=version,
            robot_id=RID,
            created=time.time(),
            sha256=sha256_file(path),
            bytes=path.stat().st_size,
            arch="tiny",
            dtype="fp16",
            metrics={"miou_rural": rural, "miou_urban": 0.5, "miou_regions": 0.5},
            metrics_before={"miou_rural": rural_before, "miou_urban": 0.5, "miou_regions": 0.4},
            parent="base-tiny",
        )
    )
    store.close()
    return path


async def receive(robot: Peer, drop: int) -> tuple[ModelOffer, bytes, bool]:
    """A minimal model receiver: assemble chunks, lose chunk ``drop`` once and ask for it."""
    offer = await robot.wait_for(
        lambda t, p: ModelOffer.model_validate_json(p) if t == TOPICS.model_offer(RID) else None
    )
    asm = ChunkAssembler(
        total_bytes=offer.bytes, chunk_size=offer.chunk_size, chunks=offer.chunks,
        sha256=offer.sha256,
    )  # fmt: skip
    lost = asked = False
    cursor = 0
    while not asm.complete:
        if cursor >= len(robot.received):
            await robot.wait_for(lambda t, p: True, start=cursor)
            continue
        topic, payload = robot.received[cursor]
        cursor += 1
        if topic != TOPICS.model_chunk(RID):
            continue
        env = decode(payload)
        header = ChunkHeader.model_validate(env.header)
        if header.index == drop and not lost:
            lost = True
        else:
            asm.add(header.index, env.parts[0], header.sha256)
        if asm.missing() == [drop] and not asked:
            status = ModelStatus(
                robot_id=RID, version=offer.version, state="receiving",
                received=asm.received, chunks=offer.chunks, missing=asm.missing(),
            )  # fmt: skip
            await robot.link.publish(TOPICS.model_status(RID), status.to_json())
            asked = True
    return offer, asm.assemble(), asked


async def test_transfer_model_nothing_new_then_chunks_resend_and_active(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = server_settings(broker, tmp_path / "server")
    settings = settings.model_copy(update={"model_key": "k3y"})
    async with operator(broker) as op, robot_peer(broker) as robot:
        async with ServerAgent(settings, sets=SimulatorSets()) as server:
            await server.wait_connected()
            ev = await op.final(RID, "transfer_model")
            assert ev.kind == "rejected" and "no new model" in ev.msg

        path = register(tmp_path / "server", f"{RID}-v1", rural=0.40, rural_before=0.30)
        async with ServerAgent(settings, sets=SimulatorSets()) as server:
            await server.wait_connected()
            command = await op.command(RID, "transfer_model")
            offer, data, asked = await receive(robot, drop=1)
            assert asked
            assert offer.version == f"{RID}-v1" and offer.arch == "tiny" and offer.dtype == "fp16"
            assert offer.chunk_size == 1024 and offer.chunks == -(-offer.bytes // 1024)
            assert sha256_bytes(data) == offer.sha256 == sha256_file(path)
            assert offer.signature == hmac_sha256(b"k3y", offer.signed_fields())
            assert offer.metrics["miou_rural"] == 0.40
            active = ModelStatus(
                robot_id=RID, version=offer.version, state="active",
                received=offer.chunks, chunks=offer.chunks,
            )  # fmt: skip
            await robot.link.publish(TOPICS.model_status(RID), active.to_json())
            done = await op.event(command.id, ("done", "failed"))
            assert done.kind == "done" and done.data["resent"] == 1
            assert done.data["chunks"] == offer.chunks and done.data["bytes"] == offer.bytes
            reply, _ = await op.request("list_models")
            assert reply["data"]["models"][0]["active_on"] == [RID]
            # now nothing is new
            ev = await op.final(RID, "transfer_model")
            assert ev.kind == "rejected" and "already active" in ev.msg


async def test_gate_refuses_a_worse_model_unless_forced(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = server_settings(broker, tmp_path / "server")
    register(tmp_path / "server", f"{RID}-v1", rural=0.20, rural_before=0.35)
    async with operator(broker) as op, robot_peer(broker) as robot:
        # the robot's retained state says it runs the base model
        state = RobotState(robot_id=RID, online=True, model=ModelRef(version="base-tiny"))
        await robot.link.publish(TOPICS.robot_state(RID), state.to_json(), retain=True)
        async with ServerAgent(settings, sets=SimulatorSets()) as server:
            await server.wait_connected()
            ev = await op.final(RID, "transfer_model")
            assert ev.kind == "rejected" and "0.2000" in ev.msg and "0.3500" in ev.msg
            assert ev.data["candidate_miou_rural"] == 0.20
            assert ev.data["current_miou_rural"] == 0.35
            command = await op.command(RID, "transfer_model", force=True)
            ev = await op.event(command.id, ("accepted", "rejected"))
            assert ev.kind == "accepted" and ev.data["forced"] is True
            offer = await robot.wait_for(
                lambda t, p: (
                    ModelOffer.model_validate_json(p) if t == TOPICS.model_offer(RID) else None
                )
            )
            # the robot refuses it: the command fails with the robot's reason
            refused = ModelStatus(
                robot_id=RID, version=offer.version, state="rejected", error="dry run failed"
            )
            await robot.link.publish(TOPICS.model_status(RID), refused.to_json())
            ev = await op.event(command.id, ("done", "failed"))
            assert ev.kind == "failed" and "dry run failed" in ev.msg
            assert server.store.robots()[RID] == "base-tiny"


async def test_a_robot_restart_ends_its_transfer_and_a_new_one_starts(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = server_settings(broker, tmp_path / "server")
    register(tmp_path / "server", f"{RID}-v1", rural=0.40, rural_before=0.35)
    async with operator(broker) as op, robot_peer(broker) as robot:
        state = RobotState(robot_id=RID, online=True, model=ModelRef(version="base-tiny"))
        await robot.link.publish(TOPICS.robot_state(RID), state.to_json(), retain=True)
        async with ServerAgent(settings, sets=SimulatorSets()) as server:
            await server.wait_connected()
            command = await op.command(RID, "transfer_model")
            assert (await op.event(command.id, ("accepted", "rejected"))).kind == "accepted"
            # the robot process restarts before it reports anything: a new start time
            restarted = state.model_copy(update={"started": state.started + 5.0})
            await robot.link.publish(TOPICS.robot_state(RID), restarted.to_json(), retain=True)
            ev = await op.event(command.id, ("done", "failed"))
            assert ev.kind == "failed" and "restarted during the transfer" in ev.msg
            again = await op.command(RID, "transfer_model")
            assert (await op.event(again.id, ("accepted", "rejected"))).kind == "accepted"
            assert server.store.robots()[RID] == "base-tiny"
