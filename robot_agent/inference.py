"""Inference off the event loop: the running model, one frame's result, and the worker loop.

The worker reads the model reference once per frame, so replacing it (a model update, a
rollback) takes effect between two frames, never in the middle of one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import ModelError
from common.schemas import ModelRef
from models.checkpoint import CheckpointMeta
from models.mining import MiningResult, mine
from models.network import SegNet, preprocess
from robot_agent.mailbox import LatestMailbox
from robot_agent.sources import CameraFrame

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A verified model in memory, with the SHA-256 of its checkpoint file and where it lies."""

    model: SegNet
    meta: CheckpointMeta
    sha256: str
    path: Path | None = None

    @property
    def version(self) -> str:
        return self.meta.version

    def ref(self) -> ModelRef:
        return ModelRef(version=self.meta.version, sha256=self.sha256, arch=self.meta.arch)


class ModelSlot:
    """The running model; replaced by one reference assignment (atomic for the worker)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._current = loaded
        self.swaps = 0

    @property
    def current(self) -> LoadedModel:
        return self._current

    def swap(self, new: LoadedModel) -> LoadedModel:
        """Install ``new``; returns the model it replaced."""
        old, self._current = self._current, new
        self.swaps += 1
        return old


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def dry_run(model: SegNet, size_hw: tuple[int, int], num_classes: int) -> None:
    """One inference on a blank frame: ModelError unless the logits have the expected shape."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = preprocess(np.zeros((*size_hw, 3), dtype=np.uint8)).to(device)
        out = model.forward_lowres(x)
    if out.ndim != 4 or out.shape[0] != 1 or out.shape[1] != num_classes:
        raise ModelError(
            f"dry run: logits of shape {tuple(out.shape)}, expected (1, {num_classes}, h, w)"
        )
    if not bool(torch.isfinite(out).all()):
        raise ModelError("dry run: non-finite logits")


def class_mask(
    lowres_logits: torch.Tensor, frame_hw: tuple[int, int], box: tuple[int, int, int, int]
) -> np.ndarray:
    """Class ids of the pixels of ``box`` (x, y, w, h) in a frame of ``frame_hw``, from logits
    upsampled bilinearly to the frame size, as ``F.interpolate(align_corners=False)`` would,
    but computed for the box only (the whole frame at full size costs several times more)."""
    frame_h, frame_w = frame_hw
    x, y, w, h = box
    dev = lowres_logits.device
    gx = (torch.arange(w, device=dev, dtype=torch.float32) + x + 0.5) * (2.0 / frame_w) - 1.0
    gy = (torch.arange(h, device=dev, dtype=torch.float32) + y + 0.5) * (2.0 / frame_h) - 1.0
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
    with torch.inference_mode():
        up = F.grid_sample(
            lowres_logits[None].float(),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )[0]
    # numpy's argmax over the class axis is several times faster than torch's on CPU
    return np.ascontiguousarray(up.cpu().numpy().argmax(0).astype(np.uint8))


@dataclass(frozen=True)
class FrameResult:
    """One processed frame: the camera frame, its mined region with the predicted classes of
    that region at frame resolution, and the class mask at the inference size (for previews)."""

    frame_id: str
    image: np.ndarray
    mask: np.ndarray
    box_mask: np.ndarray
    mining: MiningResult
    infer_ms: float
    model_version: str

    @property
    def frame_size(self) -> tuple[int, int]:
        """(W, H) of the camera frame."""
        return int(self.image.shape[1]), int(self.image.shape[0])


class InferenceWorker:
    """Runs each frame at the inference size and mines its hardest region."""

    def __init__(self, slot: ModelSlot, *, infer_size: tuple[int, int], region_frac: float) -> None:
        self.slot = slot
        self.infer_w, self.infer_h = infer_size
        self.region_frac = region_frac
        self.processed = 0
        self.errors = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def process(self, frame_id: str, image: np.ndarray) -> FrameResult:
        """Blocking: call in a thread. The model reference is read exactly once."""
        loaded = self.slot.current
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"frame {frame_id}: expected HxWx3 uint8, got {image.shape} {image.dtype}"
            )
        model = loaded.model
        device = next(model.parameters()).device
        size = (self.infer_h, self.infer_w)
        start = time.perf_counter()
        with torch.inference_mode():
            low = model.forward_lowres(preprocess(image, size).to(device))[0]
        infer_ms = (time.perf_counter() - start) * 1000.0
        frame_hw = (int(image.shape[0]), int(image.shape[1]))
        mining = mine(low.float().cpu(), frame_hw, self.region_frac)
        return FrameResult(
            frame_id=frame_id,
            image=image,
            mask=class_mask(low, size, (0, 0, self.infer_w, self.infer_h)),
            box_mask=class_mask(low, frame_hw, mining.box),
            mining=mining,
            infer_ms=infer_ms,
            model_version=loaded.version,
        )

    async def run(
        self,
        mailbox: LatestMailbox[CameraFrame],
        handle: Callable[[FrameResult], Awaitable[None]],
        on_error: Callable[[str], Awaitable[None]],
    ) -> None:
        """Take the newest frame, infer in a thread, hand the result on; forever."""
        while True:
            frame_id, image = await mailbox.get()
            self.idle.clear()
            try:
                result = await asyncio.to_thread(self.process, frame_id, image)
            except (ValueError, RuntimeError) as exc:
                self.errors += 1
                logger.warning("inference failed on frame %s: %s", frame_id, exc)
                await on_error(f"inference failed on frame {frame_id}: {exc}")
                continue
            else:
                self.processed += 1
                try:
                    await handle(result)
                except Exception as exc:  # e.g. a full disk: report, keep inferring
                    logger.exception("handling frame %s failed", frame_id)
                    await on_error(f"frame {frame_id}: {exc.__class__.__name__}: {exc}")
            finally:
                self.idle.set()
