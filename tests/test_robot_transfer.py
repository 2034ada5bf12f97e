"""Transfer Data on the real broker, with a minimal stand-in for the server that acks."""

from __future__ import annotations

import math
from pathlib import Path

from common.envelope import decode
from common.schemas import RegionHeader, RegionsAck, TransferManifest
from robot_agent.agent import RobotAgent
from robot_agent.transfer import select
from tests.helpers.brokers import BrokerHandle
from tests.helpers.robot import RID, Operator, Received, robot_settings


class AckingServer:
    """Records region envelopes; on a manifest acks the first region, rejects the second and
    leaves the rest out of the ack (as if lost)."""

    def __init__(self, op: Operator) -> None:
        self.op = op
        self.regions: list[RegionHeader] = []
        self.manifests: list[TransferManifest] = []
        self.enabled = False

    async def __call__(self, item: Received) -> None:
        if item.leaf != "regions":
            return
        env = decode(item.payload)
        if env.header["type"] == "region":
            self.regions.append(RegionHeader.model_validate(env.header))
            assert len(env.parts) == 2
            return
        manifest = TransferManifest.model_validate(env.header)
        self.manifests.append(manifest)
        if not self.enabled:
            return
        ids = manifest.region_ids
        ack = RegionsAck(
            robot_id=RID,
            transfer_id=manifest.transfer_id,
            stored=ids[:1],
            rejected={ids[1]: "mask size differs"} if len(ids) > 1 else {},
        )
        await self.op.publish("regions/ack", ack.to_json())


async def test_transfer_data_marks_only_acked_and_reports_bytes(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = robot_settings(broker, tmp_path, preview_fps=0)
    async with Operator(broker) as op, RobotAgent(settings, ack_timeout=1.0) as robot:
        server = AckingServer(op)
        op.on_message = server
        await op.wait(lambda: op.states())

        nothing = await op.answer(await op.send("transfer_data"))
        assert nothing.kind == "rejected" and "no candidate" in nothing.msg

        await op.answer(await op.send("start_segmentation"))
        await op.wait(lambda: robot.store.count >= 15)
        await op.answer(await op.send("stop_segmentation"))
        n = robot.store.unsent_count
        k = math.ceil(0.2 * n)
        before = {c.region_id: c for c in robot.store.unsent()}
        # the configured rule (default "diverse"), hardest first, exactly ceil(0.2 n)
        top = select(list(before.values()), 0.2, robot.rs.selection)
        assert len(top) == k and top[0].score == max(c.score for c in before.values())

        # no ack within the timeout: failed, nothing marked
        ref = await op.send("transfer_data")
        failed = await op.answer(ref)
        assert failed.kind == "failed" and "no RegionsAck" in failed.msg
        assert robot.store.unsent_count == n
        assert len(server.regions) == k and len(server.manifests) == 1

        # with an ack: only the stored id is marked sent (a loaded machine may take longer than
        # the 1 s that made the no-ack case quick)
        robot.transfer.ack_timeout = 30.0
        server.enabled = True
        server.regions.clear()
        done = await op.answer(await op.send("transfer_data"))
        assert done.kind == "done", done.msg
        sent = [r.region_id for r in server.regions]
        assert sent == [c.region_id for c in top]  # hardest first, exactly ceil(0.2 n)
        manifest = server.manifests[-1]
        assert manifest.region_ids == sent and manifest.frames_considered == n
        for header in server.regions:
            cand = before[header.region_id]
            assert header.box == cand.box and header.frame_size == (160, 120)
            assert header.transfer_id == manifest.transfer_id and header.model_version == "base"

        data = done.data
        assert data["regions"] == 1 and data["frames_considered"] == n
        assert data["rejected"] == {sent[1]: "mask size differs"}
        assert data["bytes_sent"] == manifest.bytes_sent
        assert data["full_frames_bytes"] == manifest.full_frames_bytes
        # crop of 1/4 of the frame for k of n frames: image bytes ~ k/n * 1/4 of full frames
        expected = k / n * 0.25
        image_ratio = data["image_bytes"] / data["full_frames_bytes"]
        assert abs(image_ratio - expected) < 0.15 * expected
        # what went over the wire adds the predicted masks and headers, not much more
        assert expected < data["ratio"] < 1.6 * expected
        assert math.isclose(
            data["ratio"], data["bytes_sent"] / data["full_frames_bytes"], rel_tol=1e-3
        )

        # the acked one is sent, the rejected and unselected ones are dropped, the one the
        # server never mentioned waits for the next transfer
        assert robot.store.get(sent[0]) is not None and robot.store.get(sent[0]).sent  # type: ignore[union-attr]
        assert robot.store.get(sent[1]) is None
        left = [c.region_id for c in robot.store.unsent()]
        assert left == sent[2:]
        state = await op.wait(lambda: [s for s in op.states() if s.bytes_sent > 0])
        assert state[-1].unsent_candidates == len(sent) - 2
