"""Start/Stop Annotation and the editor's requests: order, validation, persistence, skip."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from common.images import PNG_SIGNATURE, decode_mask, encode_jpeg, encode_png
from common.schemas import ServerState
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


def png16(grey: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG (Pillow writes mode I;16 as bit depth 16)."""
    buf = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16)).save(buf, format="PNG")
    assert buf.getvalue()[24] == 16
    return buf.getvalue()


def png16_rgb(rgb: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one: chunks by hand)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    png = PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
    png += chunk(b"IEND", b"")
    decoded = Image.open(io.BytesIO(png))
    assert decoded.mode == "RGB"  # Pillow would hand it over as 8-bit RGB: 258 -> 1
    assert np.asarray(decoded)[0, 0, 0] == 1
    return png


async def _send_regions(broker: BrokerHandle, scores: list[float]) -> list[str]:
    regions = [make_region(score=s, seed=i) for i, s in enumerate(scores)]
    async with robot_peer(broker) as robot:
        for region in regions:
            await robot.link.publish(TOPICS.robot_regions(RID), region_payload(*region))
        ids = [h.region_id for h, _, _ in regions]
        await robot.link.publish(TOPICS.robot_regions(RID), manifest_payload(RID, "t1", ids))
        await robot.wait_for(lambda t, p: True if t.endswith("regions/ack") else None)
    return ids


async def test_annotation_session_order_validation_and_restart(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    settings = server_settings(broker, tmp_path / "server")
    async with operator(broker) as op:
        async with ServerAgent(settings, sets=SimulatorSets()) as server:
            await server.wait_connected()
            # out of order: nothing to annotate yet, no session to stop
            ev = await op.final(RID, "start_annotation")
            assert ev.kind == "rejected" and "no unlabeled regions" in ev.msg
            ev = await op.final(RID, "stop_annotation")
            assert ev.kind == "rejected" and "no annotation session" in ev.msg

            ids = await _send_regions(broker, [0.3, 0.8, 0.1, 0.6])
            ev = await op.final(RID, "start_annotation")
            assert ev.kind == "done" and ev.data["total"] == 4
            ev = await op.final(RID, "start_annotation")
            assert ev.kind == "rejected" and "already open" in ev.msg

            reply, _ = await op.request("list_regions")
            listed = reply["data"]["regions"]
            assert [r["score"] for r in listed] == [0.8, 0.6, 0.3, 0.1]  # hardest first
            assert reply["data"]["session"] == {
                "v": 1, "open": True, "robot_id": RID, "total": 4, "done": 0,
            }  # fmt: skip
            hardest = listed[0]["region_id"]
            assert hardest == ids[1]

            header, parts = await op.request("get_region", {"region_id": hardest})
            assert header["ok"] and header["annotated"] is False
            assert header["region"]["region_id"] == hardest and len(parts) == 3
            assert parts[2] == b""

            # refused submissions, each with its reason; nothing stored
            bad = [
                ("size", encode_png(np.zeros((10, 10), dtype=np.uint8))),
                ("unknown class", encode_png(np.full((24, 32), 19, dtype=np.uint8))),
                ("not a PNG", b"GIF89a nonsense"),
                ("single-channel", encode_png(np.zeros((24, 32, 3), dtype=np.uint8))),
                # issue 15: class 258 in 16-bit grey or 16-bit RGB is refused, never clipped
                ("16-bit PNG refused", png16(np.full((24, 32), 258, dtype=np.uint16))),
                ("16-bit PNG refused", png16_rgb(np.full((24, 32, 3), 258, dtype=np.uint16))),
                ("not a PNG", encode_jpeg(np.zeros((24, 32, 3), dtype=np.uint8))),
            ]
            for reason, png in bad:
                reply, _ = await op.request("submit_annotation", {"region_id": hardest}, [png])
                assert reply["ok"] is False and reason in reply["error"], (reason, reply)
            reply, _ = await op.request("submit_annotation", {"region_id": "nope"}, [png])
            assert reply["ok"] is False and "not stored" in reply["error"]
            assert server.store.counts() == (4, 0)
            assert not (tmp_path / "server/regions" / RID / hardest / "annotation.png").exists()
            errors = [e for e in op.events() if e.kind == "error"]
            assert len(errors) >= 5 and any("unknown class ids [19]" in e.msg for e in errors)

            # a good one: classes 0..18 and 255 (ignore)
            mask = np.full((24, 32), 255, dtype=np.uint8)
            mask[:12] = 8
            mask[12:, :16] = 0
            good = encode_png(mask)
            reply, _ = await op.request("submit_annotation", {"region_id": hardest}, [good])
            assert reply["ok"] and reply["data"]["labeled_pixels"] == 12 * 32 + 12 * 16
            # skip the easiest
            reply, _ = await op.request("submit_annotation", {"region_id": ids[2], "skip": True})
            assert reply["ok"] and reply["data"]["skipped"] is True
            assert server.store.counts() == (4, 1)
            reply, _ = await op.request("server_state")
            state = ServerState.model_validate(reply["data"])
            assert state.annotation.done == 2 and state.annotated == 1 and state.regions == 4

        # restart: the session and the annotation survive
        async with ServerAgent(settings, sets=SimulatorSets()) as server:
            await server.wait_connected()
            header, parts = await op.request("get_region", {"region_id": hardest})
            assert header["annotated"] is True
            assert np.array_equal(decode_mask(parts[2]), mask)
            reply, _ = await op.request("list_regions")
            assert reply["data"]["session"]["open"] is True
            assert reply["data"]["session"]["done"] == 2
            flags = {
                r["region_id"]: (r["annotated"], r["skipped"]) for r in reply["data"]["regions"]
            }
            assert flags[hardest] == (True, False) and flags[ids[2]] == (False, True)
            ev = await op.final(RID, "stop_annotation")
            assert ev.kind == "done" and ev.data["labeled"] == 1 and ev.data["done"] == 2
            # the retained state says the session is closed
            await op.wait_for(
                lambda t, p: (
                    True
                    if t == TOPICS.server_state
                    and not ServerState.model_validate_json(p).annotation.open
                    and ServerState.model_validate_json(p).online
                    else None
                )
            )
            # a request without a usable reply topic is an error event, not a crash
            mark = len(op.received)
            await op.link.publish(TOPICS.server_cmd, b'{"v":1,"cmd":"list_regions"}')
            ev = await op.event(kinds=("error",), start=mark)
            assert "reply_to" in ev.msg
