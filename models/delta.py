"""Model deltas: a new version as the bitwise difference from a parent the robot already has.

Fine-tuning keeps the first backbone blocks and every BatchNorm statistic fixed
(``models.training``), so those tensors are bit-identical to the parent's and are not sent.
Every other floating tensor changes by a few units in the last place of the checkpoint's
dtype (fp16 by default, ``server.model_dtype``): the difference of the raw bit patterns, taken
modulo 2^16 (2^32 for fp32), is a stream of small integers that compresses several-fold once
split into byte planes. Applying it is integer addition on the same bit patterns, so the
rebuilt weights are bit-exact and their SHA-256 (``weights_sha256``, the checkpoint's own
content hash) equals the new version's. Nothing is rounded on the wire: the robot ends with
exactly the weights the server registered and gated.

Format: an envelope (``common.envelope``), header ``DeltaHeader`` (JSON), parts
``[diff, raw]``, each zlib-compressed: ``diff`` holds the byte planes of the bit differences
of the ``add`` tensors (in header order, one element size per delta), ``raw`` the bytes of
``raw`` tensors (new names, new shapes or dtypes, changed integer tensors). Names not listed
are copied from the parent; ``drop`` names are left out.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from common.envelope import decode, encode
from common.errors import ArsError, ModelError
from models.checkpoint import CheckpointMeta, weights_sha256

FORMAT = 1
#: zlib level: 1 makes 0.186 of the fp32 checkpoint in 0.24 s (LR-ASPP, 100 fine-tune iterations,
#: load ~9); level 6 makes 0.165 in 2.2 s, on the server before every first offer.
LEVEL = 1
#: A delta larger than the whole decompressed model is refused before inflating it.
MAX_INFLATED_BYTES = 1 << 30

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_DTYPES: dict[str, torch.dtype] = {
    str(t): t
    for t in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64,
              torch.int32, torch.uint8, torch.bool)
}  # fmt: skip


class DeltaError(ModelError):
    """A delta that cannot be applied to this parent, or whose result is not the promised one."""


class TensorEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=512)
    op: Literal["add", "raw"]
    dtype: str
    shape: list[int] = Field(max_length=8)


class DeltaHeader(BaseModel):
    """What a delta rebuilds and from what; the target checkpoint's metadata travels with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Literal["model_delta"] = "model_delta"
    format: Literal[1] = 1
    codec: Literal["zlib"] = "zlib"
    parent_version: str
    parent_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    version: str
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    arch: str
    classes: list[str]
    dtype: Literal["fp32", "fp16"]
    metrics: dict[str, float] = Field(default_factory=dict)
    created: str = ""
    tensors: list[TensorEntry] = Field(default_factory=list, max_length=10_000)
    drop: list[str] = Field(default_factory=list, max_length=10_000)

    def meta(self) -> CheckpointMeta:
        return CheckpointMeta(
            arch=self.arch,
            classes=tuple(self.classes),
            version=self.version,
            metrics=dict(self.metrics),
            dtype=self.dtype,
            weights_sha256=self.weights_sha256,
            created=self.created,
        )


def _bits(t: torch.Tensor) -> np.ndarray:
    """The tensor's raw bit patterns as little-endian unsigned integers (a view when it can)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().view(np.dtype(_UINT[t.element_size()]).newbyteorder("<"))


def _planes(values: np.ndarray) -> bytes:
    """Byte ``i`` of every value, then byte ``i+1``...: the high bytes of small differences
    are all 0x00 or 0xFF and compress to almost nothing."""
    size = values.dtype.itemsize
    return values.view(np.uint8).reshape(-1, size).T.tobytes()


def _unplanes(data: bytes, size: int, count: int) -> np.ndarray:
    if len(data) != size * count:
        raise DeltaError(
            f"delta diff part holds {len(data)} bytes, the header implies {size * count}"
        )
    grid = np.frombuffer(data, dtype=np.uint8).reshape(size, count)
    return np.ascontiguousarray(grid.T).view(np.dtype(_UINT[size]).newbyteorder("<")).reshape(-1)


def encode_delta(
    parent: Mapping[str, torch.Tensor],
    parent_meta: CheckpointMeta,
    child: Mapping[str, torch.Tensor],
    child_meta: CheckpointMeta,
) -> bytes:
    """The delta that turns ``parent`` into ``child`` (both as read from their checkpoints)."""
    entries: list[TensorEntry] = []
    diffs: list[np.ndarray] = []
    raws: list[bytes] = []
    width: int | None = None
    for name, new in child.items():
        old = parent.get(name)
        same_kind = old is not None and old.dtype == new.dtype and old.shape == new.shape
        if same_kind and old is not None and torch.equal(_bits_tensor(old), _bits_tensor(new)):
            continue
        shape = [int(s) for s in new.shape]
        if (
            same_kind
            and old is not None
            and new.is_floating_point()
            and width in (None, new.element_size())
        ):
            width = new.element_size()
            diffs.append(_bits(new) - _bits(old))  # wraps modulo 2^bits: exact both ways
            entries.append(TensorEntry(name=name, op="add", dtype=str(new.dtype), shape=shape))
        else:
            raws.append(
                new.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            )
            entries.append(TensorEntry(name=name, op="raw", dtype=str(new.dtype), shape=shape))
    header = DeltaHeader(
        parent_version=parent_meta.version,
        parent_sha256=parent_meta.weights_sha256,
        version=child_meta.version,
        weights_sha256=child_meta.weights_sha256,
        arch=child_meta.arch,
        classes=list(child_meta.classes),
        dtype="fp16" if child_meta.dtype == "fp16" else "fp32",
        metrics=dict(child_meta.metrics),
        created=child_meta.created,
        tensors=entries,
        drop=[name for name in parent if name not in child],
    )
    diff = _planes(np.concatenate(diffs)) if diffs else b""
    return encode(
        header.model_dump(mode="json"),
        [zlib.compress(diff, LEVEL), zlib.compress(b"".join(raws), LEVEL)],
    )


def _bits_tensor(t: torch.Tensor) -> torch.Tensor:
    """Bitwise view for equality (``torch.equal`` on floats says -0.0 == 0.0 and NaN != NaN)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def read_header(data: bytes | bytearray | memoryview) -> tuple[DeltaHeader, list[bytes]]:
    """Parse a delta's envelope and header; DeltaError names what is wrong."""
    try:
        env = decode(bytes(data), max_bytes=len(data))
    except ArsError as exc:
        raise DeltaError(f"not a model delta: {exc}") from exc
    try:
        header = DeltaHeader.model_validate(env.header)
    except ValueError as exc:
        raise DeltaError(f"model delta header is invalid: {exc}") from exc
    if len(env.parts) != 2:
        raise DeltaError(f"model delta needs 2 parts, has {len(env.parts)}")
    return header, [bytes(p) for p in env.parts]


def _inflate(part: bytes, expected: int, what: str) -> bytes:
    try:
        out = zlib.decompressobj().decompress(part, expected + 1)
    except zlib.error as exc:
        raise DeltaError(f"model delta {what} part does not inflate: {exc}") from exc
    if len(out) != expected:
        raise DeltaError(
            f"model delta {what} part inflates to {len(out)} bytes, expected {expected}"
        )
    return out


def apply_delta(
    parent: Mapping[str, torch.Tensor],
    parent_meta: CheckpointMeta,
    data: bytes | bytearray | memoryview,
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Rebuild the new version's weights from ``parent``; DeltaError unless the result's
    SHA-256 is the one the delta promises (and the parent the one it was made from)."""
    header, (diff_part, raw_part) = read_header(data)
    if header.parent_version != parent_meta.version:
        raise DeltaError(
            f"delta is from {header.parent_version}, this robot has {parent_meta.version}"
        )
    if header.parent_sha256 != parent_meta.weights_sha256:
        raise DeltaError(
            f"delta is from {header.parent_version} with weights {header.parent_sha256[:12]}..., "
            f"this robot's are {parent_meta.weights_sha256[:12]}..."
        )
    out: dict[str, torch.Tensor] = {n: t for n, t in parent.items() if n not in set(header.drop)}
    adds = [e for e in header.tensors if e.op == "add"]
    raws = [e for e in header.tensors if e.op == "raw"]
    for e in header.tensors:
        if e.dtype not in _DTYPES:
            raise DeltaError(f"delta tensor {e.name}: unsupported dtype {e.dtype}")
        if any(s < 0 for s in e.shape):
            raise DeltaError(f"delta tensor {e.name}: negative shape {e.shape}")
    sizes = {_DTYPES[e.dtype].itemsize for e in adds}
    if len(sizes) > 1:
        raise DeltaError("delta mixes element sizes in its diff part")
    counts = [int(np.prod(e.shape, dtype=np.int64)) for e in adds]
    size = sizes.pop() if sizes else 1
    if sum(counts) * size > MAX_INFLATED_BYTES:
        raise DeltaError("delta is larger than any model")
    diff = _unplanes(_inflate(diff_part, sum(counts) * size, "diff"), size, sum(counts))
    offset = 0
    for e, n in zip(adds, counts, strict=True):
        old = parent.get(e.name)
        if old is None or str(old.dtype) != e.dtype or list(old.shape) != e.shape:
            raise DeltaError(f"delta adds to {e.name}, which the parent lacks or shapes otherwise")
        bits = _bits(old) + diff[offset : offset + n]
        offset += n
        out[e.name] = torch.from_numpy(bits.view(np.uint8)).view(old.dtype).reshape(old.shape)
    raw_sizes = [int(np.prod(e.shape, dtype=np.int64)) * _DTYPES[e.dtype].itemsize for e in raws]
    if sum(raw_sizes) > MAX_INFLATED_BYTES:
        raise DeltaError("delta is larger than any model")
    raw = _inflate(raw_part, sum(raw_sizes), "raw")
    offset = 0
    for e, nbytes in zip(raws, raw_sizes, strict=True):
        buf = bytearray(raw[offset : offset + nbytes])  # writable: torch wants its own memory
        offset += nbytes
        flat = (
            torch.frombuffer(buf, dtype=torch.uint8)
            if nbytes
            else torch.empty(0, dtype=torch.uint8)
        )
        out[e.name] = flat.view(_DTYPES[e.dtype]).reshape(e.shape)
    meta = header.meta()
    actual = weights_sha256(out)
    if actual != meta.weights_sha256:
        raise DeltaError(
            f"rebuilt weights of {meta.version} have SHA-256 {actual[:12]}..., "
            f"the offer promises {meta.weights_sha256[:12]}..."
        )
    return out, meta
