"""Topics, ids, schemas and chunking: pure units checked against hand-made cases."""

from __future__ import annotations

import pytest

from common.chunking import ChunkAssembler, split_chunks
from common.errors import PayloadTooLarge, ProtocolError, TransferError
from common.hashing import sha256_bytes
from common.ids import is_safe_id
from common.schemas import Command, RegionHeader, parse_json, validate
from common.topics import Topics


def test_topics_build_and_parse() -> None:
    t = Topics("ars")
    assert t.robot_cmd("rover1") == "ars/robots/rover1/cmd"
    assert t.model_chunk("r2") == "ars/robots/r2/model/chunk"
    assert t.parse_robot_topic("ars/robots/rover1/model/status") == ("rover1", "model/status")
    assert t.parse_robot_topic("ars/robots/rover1/nope") is None
    assert t.parse_robot_topic("other/robots/x/state") is None
    with pytest.raises(ProtocolError):
        t.robot_cmd("../x")


@pytest.mark.parametrize(
    "bad", ["", "..", "a/b", "../etc", "a..b", "-x", "x" * 200, "a b", 5, None]
)
def test_path_like_ids_refused(bad: object) -> None:
    assert not is_safe_id(bad)


def test_minimal_command_is_valid() -> None:
    cmd = parse_json(Command, b'{"v":1,"cmd":"start_segmentation"}')
    assert cmd.cmd == "start_segmentation" and cmd.args == {} and is_safe_id(cmd.id)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"{nope", "invalid JSON"),
        (b'{"v":2,"cmd":"x"}', "schema version 2"),
        (b'{"v":1}', "field 'cmd'"),
        (b'{"v":1,"cmd":"x","extra":1}', "field 'extra'"),
        (b'{"v":1,"cmd":"x","args":{"a":NaN}}', "invalid JSON"),
        (b'{"v":1,"cmd":"x","id":"../../etc"}', "command id"),
    ],
)
def test_bad_commands_refused_naming_the_field(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_json(Command, payload)


def test_oversized_json_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_json(Command, b"x" * 1000, max_bytes=100)


def test_region_header_validates_box_and_numbers() -> None:
    good = dict(
        robot_id="r1",
        transfer_id="t1",
        region_id="r1-f1",
        frame_id="f1",
        score=0.5,
        mean_entropy=0.4,
        region_entropy=0.6,
        box=(0, 0, 10, 10),
        frame_size=(20, 20),
        model_version="base",
    )
    assert validate(RegionHeader, good).box == (0, 0, 10, 10)
    with pytest.raises(ProtocolError, match="box"):
        validate(RegionHeader, {**good, "box": (-1, 0, 10, 10)})
    with pytest.raises(ProtocolError, match="score"):
        validate(RegionHeader, {**good, "score": -1})
    with pytest.raises(ProtocolError, match="region_id"):
        validate(RegionHeader, {**good, "region_id": "a/b"})


def test_chunks_reassemble_in_any_order_with_duplicates() -> None:
    data = bytes(range(256)) * 41  # 10496 bytes
    chunks = split_chunks(data, 1024)
    assert len(chunks) == 11 and len(chunks[-1]) == 256
    asm = ChunkAssembler(
        total_bytes=len(data), chunk_size=1024, chunks=11, sha256=sha256_bytes(data)
    )
    for i in reversed(range(11)):
        assert asm.add(i, chunks[i], sha256_bytes(chunks[i]))
    assert not asm.add(3, chunks[3], sha256_bytes(chunks[3]))
    assert asm.complete and asm.assemble() == data


def test_corrupt_chunks_refused_and_counted_missing() -> None:
    data = b"a" * 3000
    chunks = split_chunks(data, 1024)
    asm = ChunkAssembler(total_bytes=3000, chunk_size=1024, chunks=3, sha256=sha256_bytes(data))
    with pytest.raises(TransferError, match="SHA-256"):
        asm.add(0, b"b" * 1024, sha256_bytes(chunks[0]))
    with pytest.raises(TransferError, match="out of range"):
        asm.add(7, chunks[0], sha256_bytes(chunks[0]))
    with pytest.raises(TransferError, match="bytes, expected"):
        asm.add(2, chunks[0], sha256_bytes(chunks[0]))
    asm.add(1, chunks[1], sha256_bytes(chunks[1]))
    assert asm.missing() == [0, 2]
    with pytest.raises(TransferError, match="incomplete"):
        asm.assemble()


def test_whole_sha_mismatch_refused() -> None:
    data = b"x" * 100
    asm = ChunkAssembler(total_bytes=100, chunk_size=100, chunks=1, sha256="0" * 64)
    asm.add(0, data, sha256_bytes(data))
    with pytest.raises(TransferError, match="assembled"):
        asm.assemble()


def test_inconsistent_offer_refused() -> None:
    with pytest.raises(TransferError, match="inconsistent"):
        ChunkAssembler(total_bytes=3000, chunk_size=1024, chunks=5, sha256="0" * 64)


def test_model_offer_chunk_size_is_the_documented_256_kib() -> None:
    """docs/protocol.md: ``chunk_size <= 256 KiB``; the schema, the splitter and the server
    settings use the same ``MAX_CHUNK_BYTES`` (issue 15: the schema used to allow 1 MiB)."""
    from pathlib import Path

    from common.chunking import MAX_CHUNK_BYTES
    from common.config import ServerSettings
    from common.schemas import ModelOffer

    assert MAX_CHUNK_BYTES == 256 * 1024
    offer = {
        "robot_id": "rover1", "version": "v1", "sha256": "0" * 64, "bytes": 1 << 20,
        "chunk_size": MAX_CHUNK_BYTES, "chunks": 4, "arch": "tiny",
    }  # fmt: skip
    assert ModelOffer.model_validate(offer).chunk_size == MAX_CHUNK_BYTES
    with pytest.raises(ProtocolError, match="chunk_size"):
        validate(ModelOffer, {**offer, "chunk_size": MAX_CHUNK_BYTES + 1}, where="offer")
    with pytest.raises(ValueError):
        split_chunks(b"x", MAX_CHUNK_BYTES + 1)
    assert ServerSettings.model_fields["chunk_size"].metadata[-1].le == MAX_CHUNK_BYTES
    doc = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    assert "chunk_size ≤ 256 KiB" in doc
