"""Region intake on a real broker: store, dedupe (QoS 1 redelivery), ack, refuse bad regions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.envelope import encode
from common.images import encode_png
from common.schemas import RegionsAck
from server_agent.agent import ServerAgent
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
)


def _ack(transfer_id: str) -> Callable[[str, bytes], RegionsAck | None]:
    def match(topic: str, payload: bytes) -> RegionsAck | None:
        if topic != TOPICS.robot_regions_ack(RID):
            return None
        ack = RegionsAck.model_validate_json(payload)
        return ack if ack.transfer_id == transfer_id else None

    return match


def _stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_regions_are_stored_deduplicated_and_acked(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = server_settings(broker, tmp_path / "server")
    regions = [make_region(score=s, seed=i) for i, s in enumerate((0.2, 0.9, 0.5))]
    async with (
        ServerAgent(settings, sets=SimulatorSets()) as server,
        robot_peer(broker) as robot,
        operator(broker) as op,
    ):
        await server.wait_connected()
        topic = TOPICS.robot_regions(RID)
        for header, crop, mask in regions:
            await robot.link.publish(topic, region_payload(header, crop, mask))
        # QoS 1 redelivery of the first region: harmless
        await robot.link.publish(topic, region_payload(*regions[0]))
        ids = [h.region_id for h, _, _ in regions]
        await robot.link.publish(topic, manifest_payload(RID, "t1", ids))
        ack = await robot.wait_for(_ack("t1"))
        assert sorted(ack.stored) == sorted(ids) and ack.rejected == {}
        assert server.store.counts() == (3, 0)
        # the ack's info event carries the transfer figures
        info = await op.wait_for(
            lambda t, p: json.loads(p) if t == TOPICS.server_events and b"t1" in p else None
        )
        assert info["data"]["stored"] == 3 and info["data"]["full_frames_bytes"] == 20000
        # files: crop and predicted mask of each region, byte for byte
        for header, crop, mask in regions:
            folder = tmp_path / "server" / "regions" / RID / header.region_id
            assert (folder / "crop.png").read_bytes() == crop
            assert (folder / "pred.png").read_bytes() == mask
        # listed hardest first
        reply, _ = await op.request("list_regions", {"robot_id": RID})
        assert reply["ok"]
        scores = [r["score"] for r in reply["data"]["regions"]]
        assert scores == [0.9, 0.5, 0.2]
        first = reply["data"]["regions"][0]
        assert first["width"] == 32 and first["height"] == 24 and first["box"] == [16, 12, 32, 24]
        assert first["annotated"] is False and first["skipped"] is False
        # a second manifest for the same transfer (redelivery) gets the same answer
        mark = len(robot.received)
        await robot.link.publish(topic, manifest_payload(RID, "t1", ids))
        again = await robot.wait_for(_ack("t1"), start=mark)
        assert again == ack
        assert server.store.counts() == (3, 0)


async def test_bad_regions_are_refused_and_the_store_is_unchanged(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = server_settings(broker, tmp_path / "server")
    good = make_region(score=0.7)
    bad_png = make_region(region_id="badpng")
    wrong_size = make_region(region_id="wrongsize")
    wrong_mask = make_region(region_id="wrongmask")
    bad_class = make_region(region_id="badclass")
    async with (
        ServerAgent(settings, sets=SimulatorSets()) as server,
        robot_peer(broker) as robot,
        operator(broker) as op,
    ):
        await server.wait_connected()
        topic = TOPICS.robot_regions(RID)
        await robot.link.publish(topic, region_payload(*good))
        await robot.link.publish(topic, manifest_payload(RID, "t0", [good[0].region_id]))
        await robot.wait_for(_ack("t0"))
        before = _stored_files(tmp_path / "server" / "regions")
        assert len(before) == 2

        h, _crop, mask = bad_png
        h = h.model_copy(update={"transfer_id": "t2"})
        await robot.link.publish(topic, region_payload(h, b"\x89PNG not really", mask))
        h2, _, mask2 = wrong_size
        h2 = h2.model_copy(update={"transfer_id": "t2"})
        small = encode_png(np.zeros((10, 10, 3), dtype=np.uint8))
        await robot.link.publish(topic, region_payload(h2, small, mask2))
        h3, crop3, _ = wrong_mask
        h3 = h3.model_copy(update={"transfer_id": "t2"})
        await robot.link.publish(
            topic, region_payload(h3, crop3, encode_png(np.zeros((5, 5), dtype=np.uint8)))
        )
        h4, crop4, _ = bad_class
        h4 = h4.model_copy(update={"transfer_id": "t2"})
        await robot.link.publish(
            topic, region_payload(h4, crop4, encode_png(np.full((24, 32), 40, dtype=np.uint8)))
        )
        # a path-like region id never passes the schema
        raw = good[0].model_dump(mode="json") | {"region_id": "../../etc", "transfer_id": "t2"}
        await robot.link.publish(topic, encode(raw, [good[1], good[2]]))
        ids = ["badpng", "wrongsize", "wrongmask", "badclass", "../../etc"]
        await robot.link.publish(topic, manifest_payload(RID, "t2", ids))
        ack = await robot.wait_for(_ack("t2"))
        assert ack.stored == []
        assert set(ack.rejected) == set(ids)
        assert "not a valid image" in ack.rejected["badpng"]
        assert "crop is 10x10, the box is 32x24" in ack.rejected["wrongsize"]
        assert "size" in ack.rejected["wrongmask"]
        assert "unknown class ids [40]" in ack.rejected["badclass"]
        assert ack.rejected["../../etc"] == "invalid region id"
        # every refusal also made an error event naming the topic
        errors = [e for e in op.events() if e.kind == "error"]
        assert len(errors) >= 5 and all(topic in e.msg for e in errors)
        assert server.store.counts() == (1, 0)
        assert _stored_files(tmp_path / "server" / "regions") == before
        assert not (tmp_path / "etc").exists()
        # the handler keeps running: a good region after the bad ones is stored
        later = make_region(score=0.1, transfer_id="t3")
        await robot.link.publish(topic, region_payload(*later))
        await robot.link.publish(topic, manifest_payload(RID, "t3", [later[0].region_id]))
        ack3 = await robot.wait_for(_ack("t3"))
        assert ack3.stored == [later[0].region_id]


def test_a_redelivery_rewrites_region_files_a_power_cut_emptied(tmp_path: Path) -> None:
    """Region files are synced per transfer, not per file: a region whose files were lost
    before the sync is unacknowledged, so its robot resends it, and the resend repairs them."""
    from server_agent.store import Store

    store = Store(tmp_path / "server")
    header, crop, mask = make_region()
    assert store.add_region(header, crop, mask)
    store.sync()
    folder = store.region_dir(RID, header.region_id)
    (folder / "crop.png").write_bytes(b"")  # what a power cut before the sync may leave
    (folder / "pred.png").unlink()
    assert not store.add_region(header, crop, mask)  # already stored: not new
    assert (folder / "crop.png").read_bytes() == crop
    assert (folder / "pred.png").read_bytes() == mask
    assert store.counts() == (1, 0)
    store.close()
