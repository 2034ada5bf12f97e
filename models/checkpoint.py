"""Checkpoints: a dict of weights and metadata, hashed, written atomically, loaded safely.

Loading uses `torch.load(weights_only=True)` (never pickle of arbitrary objects) and checks
the stored SHA-256 of the weights, the arch and the class list before building the model.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import torch

from common.classes import CLASS_NAMES
from common.errors import ModelError
from common.files import atomic_writer
from models.network import ARCHS, SegNet, build_model

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT: Final = Path(__file__).resolve().parent / "checkpoints" / "base.pt"
FORMAT: Final = 1
_REQUIRED: Final = ("weights", "arch", "classes", "version", "metrics", "dtype", "weights_sha256")


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything in a checkpoint except the weights."""

    arch: str
    classes: tuple[str, ...]
    version: str
    metrics: dict[str, float] = field(default_factory=dict)
    dtype: str = "fp32"
    weights_sha256: str = ""
    created: str = ""


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over name, dtype, shape and raw bytes of every tensor, in sorted key order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)  # no copy
    return digest.hexdigest()


def _state_for(model: SegNet, dtype: str) -> dict[str, torch.Tensor]:
    """The state dict in `dtype`, every tensor a view into one buffer per element type.

    ``torch.save`` keeps shared storages: the file holds one storage per type instead of one
    per tensor, and the weights-only unpickler reads it in half the time (19 instead of 35 ms
    for LR-ASPP MobileNetV3-Large): Python work that the robot's frames wait for while a new
    model loads. The file format and the weights' SHA-256 are unchanged.
    """
    if dtype not in ("fp32", "fp16"):
        raise ModelError(f"unsupported checkpoint dtype {dtype!r}; expected fp32 or fp16")
    target = torch.float16 if dtype == "fp16" else torch.float32
    state = {
        k: v.detach().cpu().to(target) if v.is_floating_point() else v.detach().cpu()
        for k, v in model.state_dict().items()
    }
    return _packed(state)


def weights_of(model: SegNet, dtype: str) -> dict[str, torch.Tensor]:
    """The model's weights as its checkpoint in `dtype` holds them (fp16 -> fp32 -> fp16 is
    exact, so a model built from an fp16 checkpoint gives back its bits and its SHA-256)."""
    return _state_for(model, dtype)


def _packed(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` as views into one buffer per element type (see `_state_for`)."""
    state = {k: v.detach().cpu() for k, v in weights.items()}
    flat = {
        t: torch.empty(sum(v.numel() for v in state.values() if v.dtype == t), dtype=t)
        for t in {v.dtype for v in state.values()}
    }
    offsets = dict.fromkeys(flat, 0)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        start, n = offsets[tensor.dtype], tensor.numel()
        view = flat[tensor.dtype][start : start + n].view(tensor.shape)
        view.copy_(tensor)
        out[name] = view
        offsets[tensor.dtype] = start + n
    return out


def weights_checkpoint_bytes(weights: Mapping[str, torch.Tensor], meta: CheckpointMeta) -> bytes:
    """A checkpoint file's bytes from weights and their metadata (a model rebuilt from a
    delta, ``models.delta``); its stored SHA-256 is recomputed, not taken from `meta`."""
    state = _packed(weights)
    buf = io.BytesIO()
    torch.save(_file_dict(state, meta, weights_sha256(state)), buf)
    return buf.getvalue()


def _file_dict(state: dict[str, torch.Tensor], meta: CheckpointMeta, sha: str) -> dict[str, Any]:
    """What a checkpoint file holds: the weights and their metadata (the one layout)."""
    return {
        "format": FORMAT,
        "weights": state,
        "arch": meta.arch,
        "classes": list(meta.classes),
        "version": meta.version,
        "metrics": dict(meta.metrics),
        "dtype": meta.dtype,
        "created": meta.created,
        "weights_sha256": sha,
    }


def _payload(
    model: SegNet,
    arch: str,
    version: str,
    metrics: Mapping[str, float],
    dtype: str,
    classes: Sequence[str],
) -> tuple[dict[str, Any], CheckpointMeta]:
    if arch not in ARCHS:
        raise ModelError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    state = _state_for(model, dtype)
    meta = CheckpointMeta(
        arch=arch,
        classes=tuple(classes),
        version=version,
        metrics={k: float(v) for k, v in metrics.items()},
        dtype=dtype,
        weights_sha256=weights_sha256(state),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return _file_dict(state, meta, meta.weights_sha256), meta


def checkpoint_bytes(
    model: SegNet,
    *,
    arch: str,
    version: str,
    metrics: Mapping[str, float] | None = None,
    dtype: Literal["fp32", "fp16"] = "fp32",
    classes: Sequence[str] = CLASS_NAMES,
) -> bytes:
    """The checkpoint file's bytes, for sending over the wire without touching disk."""
    payload, _ = _payload(model, arch, version, metrics or {}, dtype, classes)
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_checkpoint(
    path: str | Path,
    model: SegNet,
    *,
    arch: str,
    version: str,
    metrics: Mapping[str, float] | None = None,
    dtype: Literal["fp32", "fp16"] = "fp32",
    classes: Sequence[str] = CLASS_NAMES,
) -> CheckpointMeta:
    """Write a checkpoint atomically (``common.files.atomic_writer``)."""
    payload, meta = _payload(model, arch, version, metrics or {}, dtype, classes)
    target = Path(path)
    with atomic_writer(target, mode=0o644) as fh:  # a checkpoint is an ordinary file
        torch.save(payload, fh)
    logger.info("saved checkpoint %s (arch %s, version %s, %s)", target, arch, version, dtype)
    return meta


def _read(source: str | Path | bytes | bytearray | memoryview, device: str) -> Any:
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            return torch.load(io.BytesIO(bytes(source)), map_location=device, weights_only=True)
        return torch.load(Path(source), map_location=device, weights_only=True)
    except FileNotFoundError as exc:
        raise ModelError(f"checkpoint not found: {source!s}") from exc
    except Exception as exc:  # torch raises many types for corrupt or hostile files
        where = "bytes" if not isinstance(source, str | Path) else str(source)
        raise ModelError(f"cannot read checkpoint ({where}): {exc}") from exc


def _meta_from(
    raw: Any, expected_arch: str | None, expected_classes: Sequence[str] | None
) -> CheckpointMeta:
    if not isinstance(raw, dict):
        raise ModelError(f"checkpoint is a {type(raw).__name__}, expected a dict")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ModelError(f"checkpoint lacks {', '.join(missing)}")
    arch, classes, weights = raw["arch"], raw["classes"], raw["weights"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise ModelError("checkpoint weights are not a mapping of names to tensors")
    if arch not in ARCHS:
        raise ModelError(f"checkpoint arch {arch!r} is unknown; expected one of {', '.join(ARCHS)}")
    if expected_arch is not None and arch != expected_arch:
        raise ModelError(f"checkpoint arch {arch!r} does not match expected {expected_arch!r}")
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes):
        raise ModelError("checkpoint classes are not a list of names")
    if expected_classes is not None and tuple(classes) != tuple(expected_classes):
        raise ModelError(
            f"checkpoint has {len(classes)} classes that differ from the expected "
            f"{len(expected_classes)} ({', '.join(classes[:3])}...)"
        )
    metrics = raw["metrics"]
    if not isinstance(metrics, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) for k, v in metrics.items()
    ):
        raise ModelError("checkpoint metrics are not a mapping of names to numbers")
    if raw["dtype"] not in ("fp32", "fp16"):
        raise ModelError(f"checkpoint dtype {raw['dtype']!r} is not fp32 or fp16")
    return CheckpointMeta(
        arch=arch,
        classes=tuple(classes),
        version=str(raw["version"]),
        metrics={k: float(v) for k, v in metrics.items()},
        dtype=raw["dtype"],
        weights_sha256=str(raw["weights_sha256"]),
        created=str(raw.get("created", "")),
    )


@functools.lru_cache(maxsize=8)
def _skeleton(arch: str, num_classes: int) -> SegNet:
    """The network without weights (meta device), built once per arch and deep-copied per load.

    The state dict replaces every weight, so initialising them is wasted work, and building
    the module tree is itself slow (64 ms for LR-ASPP MobileNetV3-Large, even on the meta
    device; a deep copy takes 23): Python work that holds the GIL while the robot's inference
    thread waits for it (the robot's swap pause). Never handed out, only copied.
    """
    with torch.device("meta"):
        return build_model(arch, num_classes=num_classes)


def read_checkpoint(
    source: str | Path | bytes | bytearray | memoryview,
    *,
    expected_arch: str | None = None,
    device: str = "cpu",
    expected_classes: Sequence[str] | None = CLASS_NAMES,
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read and verify a checkpoint without building the network: (weights, metadata).

    Raises ModelError for an unreadable or truncated file, missing fields, wrong arch or
    classes, or weights whose SHA-256 differs from the stored one.
    """
    raw = _read(source, device)
    meta = _meta_from(raw, expected_arch, expected_classes)
    weights: dict[str, torch.Tensor] = raw["weights"]
    actual = weights_sha256(weights)
    if actual != meta.weights_sha256:
        raise ModelError(
            f"checkpoint weights sha256 {actual[:12]}... != stored {meta.weights_sha256[:12]}..."
        )
    return weights, meta


def build_from(
    weights: Mapping[str, torch.Tensor],
    meta: CheckpointMeta,
    device: str = "cpu",
    reuse: SegNet | None = None,
) -> SegNet:
    """The fp32 network in eval mode holding `weights` (from `read_checkpoint`).

    `reuse`: a network nobody runs any more (the robot's previous model) whose module tree
    takes the new weights instead of a fresh copy of the skeleton (23 ms of Python less); a
    different arch or shape falls back to the skeleton. Raises ModelError when the weights
    do not fit the arch (names or shapes).
    """
    try:
        fp32 = _as_fp32(weights)
    except RuntimeError as exc:  # a hostile file's strides or offsets: refused, not a crash
        raise ModelError(f"checkpoint weights cannot be converted to fp32: {exc}") from exc
    model: SegNet | None = None
    if reuse is not None and reuse.arch == meta.arch:
        with contextlib.suppress(RuntimeError):  # other classes: build afresh below
            reuse.load_state_dict(fp32, strict=True, assign=True)
            model = reuse
    if model is None:
        model = copy.deepcopy(_skeleton(meta.arch, len(meta.classes)))
        try:
            model.load_state_dict(fp32, strict=True, assign=True)
        except RuntimeError as exc:
            raise ModelError(f"checkpoint weights do not fit arch {meta.arch!r}: {exc}") from exc
    tensors = (*model.parameters(), *model.buffers())
    if any(t.is_meta for t in tensors):
        raise ModelError(f"checkpoint weights leave parts of arch {meta.arch!r} unset")
    # `Module.float()` / `.to()` visit every tensor in Python: only when there is work to do
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors):
        model.float()
    if any(t.device != torch.device(device) for t in tensors):
        model.to(device)
    return model.eval()


def _as_fp32(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as fp32, converting each shared storage once (one op, not one per
    tensor: our checkpoints keep all weights in one storage per type, see `_state_for`)."""
    converted: dict[tuple[int, torch.dtype], torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if not tensor.is_floating_point() or tensor.dtype == torch.float32:
            out[name] = tensor
            continue
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), tensor.dtype)
        if key not in converted:
            whole = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
            whole.set_(storage, 0, (storage.nbytes() // tensor.element_size(),), (1,))
            converted[key] = whole.float()
        base = converted[key]
        out[name] = base.as_strided(tensor.shape, tensor.stride(), tensor.storage_offset())
    return out


def load_checkpoint(
    source: str | Path | bytes | bytearray | memoryview,
    *,
    expected_arch: str | None = None,
    device: str = "cpu",
    expected_classes: Sequence[str] | None = CLASS_NAMES,
) -> tuple[SegNet, CheckpointMeta]:
    """Load, verify and build: returns an fp32 model in eval mode and its metadata.

    Raises ModelError for anything wrong: unreadable or truncated file, missing fields, wrong
    arch or classes, weights whose SHA-256 differs from the stored one, shape mismatches.
    """
    weights, meta = read_checkpoint(
        source, expected_arch=expected_arch, device=device, expected_classes=expected_classes
    )
    return build_from(weights, meta, device), meta
