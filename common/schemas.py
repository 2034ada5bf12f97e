"""Message schemas (pydantic): validated once at the edge, typed objects inside.

Every JSON message and envelope header carries ``v`` (the schema version). Unknown fields are
refused (``extra="forbid"``) so a typo never passes silently.
"""

from __future__ import annotations

import builtins
import json
import math
import time
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from common.chunking import MAX_CHUNK_BYTES
from common.errors import PayloadTooLarge, ProtocolError
from common.ids import id_value

SCHEMA_VERSION = 1
MAX_JSON_BYTES = 256 * 1024

RobotCommandName = Literal["start_segmentation", "stop_segmentation", "transfer_data", "rollback"]
ServerCommandName = Literal[
    "start_annotation", "stop_annotation", "start_finetune", "cancel_finetune", "transfer_model"
]
ROBOT_COMMANDS: frozenset[str] = frozenset(
    ("start_segmentation", "stop_segmentation", "transfer_data", "rollback")
)
SERVER_COMMANDS: frozenset[str] = frozenset(
    ("start_annotation", "stop_annotation", "start_finetune", "cancel_finetune", "transfer_model")
)
#: The seven buttons, in UI order, each sent to ``ars/robots/{rid}/cmd``.
BUTTONS: tuple[str, ...] = (
    "start_segmentation",
    "stop_segmentation",
    "transfer_data",
    "start_annotation",
    "stop_annotation",
    "start_finetune",
    "transfer_model",
)
#: Request/response calls on ``ars/server/cmd`` (annotation editor, model list).
SERVER_REQUESTS: frozenset[str] = frozenset(
    ("list_regions", "get_region", "submit_annotation", "list_models", "server_state")
)

SafeId = Annotated[str, Field(min_length=1, max_length=128)]
Box = tuple[int, int, int, int]


def new_id() -> str:
    """A fresh random id (command ids, transfer ids, region ids)."""
    return uuid.uuid4().hex[:16]


def now() -> float:
    return time.time()


class Message(BaseModel):
    """Base of all messages: strict about extra fields and the schema version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class _IdChecks(Message):
    @field_validator("robot_id", "region_id", "frame_id", "transfer_id", check_fields=False)
    @classmethod
    def _safe(cls, value: str) -> str:
        return id_value(value)


# --- commands and events -------------------------------------------------------------------
class Command(Message):
    """A button or a CLI call: ``{"v":1,"cmd":"start_segmentation"}`` is the smallest valid one."""

    cmd: str = Field(min_length=1, max_length=64)
    id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)
    reply_to: str | None = Field(default=None, max_length=256)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return id_value(value, "command id")


EventKind = Literal["accepted", "rejected", "done", "failed", "progress", "info", "error"]
Level = Literal["debug", "info", "warning", "error"]


class Event(Message):
    """What an agent says: command answers, progress and errors (the UI's event log)."""

    ts: float = Field(default_factory=now)
    source: str = Field(max_length=128)
    level: Level = "info"
    kind: EventKind = "info"
    msg: str = Field(max_length=4096)
    ref: str | None = None
    cmd: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class Reply(Message):
    """Answer to a request on ``ars/server/cmd`` sent to its ``reply_to`` topic."""

    ref: str
    ok: bool
    error: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


# --- state -------------------------------------------------------------------------------
class ModelRef(Message):
    version: str
    sha256: str = ""
    arch: str = ""


class RobotState(_IdChecks):
    robot_id: str
    online: bool
    segmenting: bool = False
    source: str = ""
    model: ModelRef | None = None
    previous_model: ModelRef | None = None
    fps: float = 0.0
    frames: int = 0
    candidates: int = 0
    unsent_candidates: int = 0
    bytes_sent: int = 0
    # when this robot process started (s since the epoch, the robot's clock): a new value
    # tells the server the robot restarted, e.g. in the middle of a model transfer
    started: float = 0.0
    ts: float = Field(default_factory=now)


class AnnotationSession(Message):
    open: bool = False
    robot_id: str | None = None
    total: int = 0
    done: int = 0


class FinetuneStatus(Message):
    state: Literal["idle", "running", "done", "failed", "cancelled"] = "idle"
    robot_id: str | None = None
    job_id: str | None = None
    iteration: int = 0
    iterations: int = 0
    percent: float = 0.0
    loss: float | None = None
    eta_s: float | None = None
    error: str | None = None


class ModelVersionInfo(Message):
    version: str
    robot_id: str
    created: float
    sha256: str
    bytes: int
    arch: str
    metrics: dict[str, float] = Field(default_factory=dict)
    parent: str | None = None
    active_on: list[str] = Field(default_factory=list)


class ServerState(Message):
    online: bool
    annotation: AnnotationSession = AnnotationSession()
    finetune: FinetuneStatus = FinetuneStatus()
    regions: int = 0
    annotated: int = 0
    models: list[ModelVersionInfo] = Field(default_factory=list)
    robots: list[str] = Field(default_factory=list)
    ts: float = Field(default_factory=now)


# --- envelope headers --------------------------------------------------------------------
class PreviewHeader(_IdChecks):
    """Header of a preview envelope; parts: [JPEG frame, PNG class mask]."""

    type: Literal["preview"] = "preview"
    robot_id: str
    frame_id: str
    model_version: str
    infer_ms: float = Field(ge=0)
    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    fps: float = Field(default=0.0, ge=0)
    ts: float = Field(default_factory=now)


class RegionHeader(_IdChecks):
    """Header of a region envelope; parts: [PNG crop (RGB), PNG predicted mask (trainIds)]."""

    type: Literal["region"] = "region"
    robot_id: str
    transfer_id: str
    region_id: str
    frame_id: str
    score: float = Field(ge=0)
    mean_entropy: float = Field(ge=0, le=1)
    region_entropy: float = Field(ge=0, le=1)
    box: Box
    frame_size: tuple[int, int]
    model_version: str
    ts: float = Field(default_factory=now)

    @field_validator("box")
    @classmethod
    def _box(cls, box: Box) -> Box:
        x, y, w, h = box
        if x < 0 or y < 0 or w <= 0 or h <= 0 or w > 8192 or h > 8192:
            raise ValueError(f"box {box} must have x, y >= 0 and 0 < w, h <= 8192")
        return box

    @field_validator("score", "mean_entropy", "region_entropy")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class TransferManifest(_IdChecks):
    """Closes a Transfer Data: the server acknowledges the ids it stored."""

    type: Literal["manifest"] = "manifest"
    robot_id: str
    transfer_id: str
    region_ids: list[str] = Field(max_length=100_000)
    frames_considered: int = Field(ge=0)
    bytes_sent: int = Field(ge=0)
    full_frames_bytes: int = Field(ge=0)


class RegionsAck(_IdChecks):
    robot_id: str
    transfer_id: str
    stored: list[str]
    rejected: dict[str, str] = Field(default_factory=dict)


class ModelOffer(_IdChecks):
    """Manifest of one model version sent to a robot; chunks follow on ``model/chunk``."""

    robot_id: str
    version: str = Field(min_length=1, max_length=128)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(gt=0, le=1 << 31)
    chunk_size: int = Field(gt=0, le=MAX_CHUNK_BYTES)
    chunks: int = Field(gt=0, le=1 << 16)
    arch: str
    dtype: Literal["fp32", "fp16"] = "fp32"
    classes: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    signature: str | None = None
    # a delta (``models.delta``): the payload rebuilds this version from ``parent_version``,
    # whose weights have ``parent_sha256``; the rebuilt weights must have ``weights_sha256``
    # (both the checkpoints' own weights hash). ``sha256``, ``bytes`` and ``chunks`` describe
    # the payload sent; ``full_bytes`` is the whole checkpoint's size. Absent from full offers,
    # which stay as they were.
    encoding: Literal["full", "delta"] | None = None
    parent_version: str | None = Field(default=None, min_length=1, max_length=128)
    parent_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    weights_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    full_bytes: int | None = Field(default=None, gt=0, le=1 << 31)

    @field_validator("version", "parent_version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        return None if value is None else id_value(value, "model version")

    @model_validator(mode="after")
    def _delta_fields(self) -> ModelOffer:
        delta = (self.parent_version, self.parent_sha256, self.weights_sha256, self.full_bytes)
        if self.encoding == "delta" and None in delta:
            raise ValueError(
                "a delta offer needs parent_version, parent_sha256, weights_sha256, full_bytes"
            )
        return self

    @property
    def is_delta(self) -> builtins.bool:
        return self.encoding == "delta"

    def to_json(self) -> builtins.bytes:
        return self.model_dump_json(exclude=self._unset_delta_fields()).encode()

    def _unset_delta_fields(self) -> set[str]:
        names = ("encoding", "parent_version", "parent_sha256", "weights_sha256", "full_bytes")
        return {n for n in names if getattr(self, n) is None}

    def signed_fields(self) -> builtins.bytes:
        """Canonical bytes an HMAC signature covers (everything but the signature; the delta
        fields when set, so a full offer signs the same bytes as before they existed)."""
        body = self.model_dump(exclude={"signature", *self._unset_delta_fields()})
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class ChunkHeader(Message):
    """Header of a model chunk envelope; part: the raw bytes (at most 256 KiB)."""

    type: Literal["chunk"] = "chunk"
    version: str
    index: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


#: ``need_full``: the robot cannot use a delta offer (it runs another parent, or the rebuilt
#: weights miss the promised SHA-256); the server answers with the whole checkpoint.
ModelState = Literal[
    "receiving", "verified", "active", "rejected", "rolled_back", "failed", "need_full"
]


class ModelStatus(_IdChecks):
    robot_id: str
    version: str
    state: ModelState
    received: int = 0
    chunks: int = 0
    missing: list[int] = Field(default_factory=list)
    error: str | None = None
    ts: float = Field(default_factory=now)


# --- parsing at the edge -----------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)


def parse_json(
    model: type[M],
    payload: bytes | bytearray | str,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    where: str = "",
) -> M:
    """Validate JSON against ``model``; size checked first; ProtocolError names the field."""
    size = len(payload)
    if size > max_bytes:
        raise PayloadTooLarge(f"{where or model.__name__}: payload {size} bytes, limit {max_bytes}")
    try:
        data = json.loads(payload, parse_constant=_no_nan)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting too
        raise ProtocolError(f"{where or model.__name__}: invalid JSON: {exc}") from exc
    return validate(model, data, where=where)


def validate(model: type[M], data: Any, *, where: str = "") -> M:
    """Validate already-parsed data; the error names the first offending field."""
    if isinstance(data, dict) and "v" in data and data["v"] != SCHEMA_VERSION:
        raise ProtocolError(
            f"{where or model.__name__}: unsupported schema version {data['v']!r}, "
            f"expected {SCHEMA_VERSION}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ProtocolError(f"{where or model.__name__}: field '{loc}': {first['msg']}") from exc


def _no_nan(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")
