"""Inference off the event loop: the running model, one frame's result, and the worker loop.

The worker reads the model reference once per frame, so replacing it (a model update, a
rollback) takes effect between two frames, never in the middle of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import ModelError
from common.schemas import ModelRef
from models.checkpoint import CheckpointMeta
from models.mining import MiningResult, WindowRule, mine
from models.network import SegNet, preprocess
from models.onnx_session import OnnxModel
from models.selection import GridSpreader
from robot_agent.mailbox import LatestMailbox
from robot_agent.sources import CameraFrame

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class LoadedModel:
    """A verified model in memory, with the SHA-256 of its checkpoint file and where it lies.

    ``onnx``, when set, computes the same logits as ``model`` (checked at load, see
    ``robot_agent.runtime``) and runs the frames; ``model`` stays for the checks and as the
    fallback."""

    model: SegNet
    meta: CheckpointMeta
    sha256: str
    path: Path | None = None
    onnx: OnnxModel | None = None

    @property
    def runtime(self) -> str:
        """What runs the frames: "onnx" or "torch"."""
        return "torch" if self.onnx is None else "onnx"

    @property
    def version(self) -> str:
        return self.meta.version

    def ref(self) -> ModelRef:
        return ModelRef(version=self.meta.version, sha256=self.sha256, arch=self.meta.arch)


class ModelSlot:
    """The running model; replaced by one reference assignment (atomic for the worker).

    It also takes turns on the CPU between the worker's forward passes and install work
    that would stall them. Loading a checkpoint is Python work that holds the GIL (the
    weights-only unpickler, building the module tree) and a dry run is a forward pass: run
    next to a frame, either stretched that frame by all of it (the GIL convoy: a 200 ms
    Python loop made a 44 ms frame take 240, ``ars bench transfer``'s swap pause). While
    frames flow, each such step starts right after a forward pass ends, in the slack before
    the next camera frame, and holds the next forward back until it is done: no frame waits
    for more than one step, and steps never overlap a forward.
    """

    #: While segmenting, a forward pass within this long means frames flow: steps take turns.
    SEGMENTING_WINDOW_S = 0.5
    #: How long a step waits for its turn at most (a stalled camera must not stall installs).
    TURN_TIMEOUT_S = 0.5

    def __init__(self, loaded: LoadedModel) -> None:
        self._current = loaded
        self.swaps = 0
        self._turns = threading.Condition()
        self._forwards = 0
        self._last_forward = -math.inf
        #: Set by the agent while it segments: only then do install steps wait for frames.
        self.frames_flowing = False

    @property
    def current(self) -> LoadedModel:
        return self._current

    def swap(self, new: LoadedModel) -> LoadedModel:
        """Install ``new``; returns the model it replaced."""
        old, self._current = self._current, new
        self.swaps += 1
        return old

    @contextlib.contextmanager
    def forward_pass(self) -> Iterator[None]:
        """Held by the worker for each frame's forward pass."""
        with self._turns:
            yield
            self._forwards += 1
            self._last_forward = time.monotonic()
            self._turns.notify_all()

    @contextlib.contextmanager
    def between_frames(self) -> Iterator[None]:
        """Held by one install step (load, build, dry run): runs it between two frames."""
        with self._turns:
            recent = time.monotonic() - self._last_forward < self.SEGMENTING_WINDOW_S
            if self.frames_flowing and recent:
                seen = self._forwards
                self._turns.wait_for(lambda: self._forwards > seen, self.TURN_TIMEOUT_S)
            yield

    def run_between_frames(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` inside `between_frames`: blocking, call it in a thread."""
        with self.between_frames():
            return fn(*args, **kwargs)


def inference_threads(configured: int) -> int:
    """Torch threads for inference: as configured, or (0) every core but one, which is left to
    the camera and to storing the previous frame while this one is inferred; measured on 2
    cores: 1 thread 14.1 fps, 2 threads 11.5 fps (``ars bench robot``)."""
    if configured > 0:
        return configured
    return max(1, (os.cpu_count() or 1) - 1)


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
    """One processed frame: the camera frame, its low-resolution logits and its mined region.

    The class masks are derived from the logits on first use, not in the inference step: the
    preview mask is needed only on frames that go out as previews (one in three at the
    defaults), and the box mask is computed by the thread that stores the candidate, which
    overlaps the next frame's inference on the second core.
    """

    frame_id: str
    image: np.ndarray
    logits: torch.Tensor
    infer_hw: tuple[int, int]
    mining: MiningResult
    infer_ms: float
    model_version: str

    @cached_property
    def mask(self) -> np.ndarray:
        """Class ids at the inference size (for previews)."""
        h, w = self.infer_hw
        return class_mask(self.logits, self.infer_hw, (0, 0, w, h))

    @cached_property
    def box_mask(self) -> np.ndarray:
        """Class ids of the mined box at frame resolution (sent with the region)."""
        frame_hw = (int(self.image.shape[0]), int(self.image.shape[1]))
        return class_mask(self.logits, frame_hw, self.mining.box)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(W, H) of the camera frame."""
        return int(self.image.shape[1]), int(self.image.shape[0])


class InferenceWorker:
    """Runs each frame at the inference size and mines its region.

    `window` "hardest" takes each frame's hardest window; "spread" one `GridSpreader` for the
    whole stream (frames are processed one at a time, in order, so its state needs no lock).
    """

    def __init__(
        self,
        slot: ModelSlot,
        *,
        infer_size: tuple[int, int],
        region_frac: float,
        window: str = "hardest",
    ) -> None:
        if window not in ("hardest", "spread"):
            raise ValueError(f"window rule must be 'hardest' or 'spread', got {window!r}")
        self.slot = slot
        self.infer_w, self.infer_h = infer_size
        self.region_frac = region_frac
        self.window_rule: WindowRule | None = GridSpreader().choose if window == "spread" else None
        self.processed = 0
        self.errors = 0
        self._in_flight = 0  # frames taken and not yet handled
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
        x = preprocess(image, size).to(device)
        with self.slot.forward_pass(), torch.inference_mode():
            low = (loaded.onnx or model).forward_lowres(x)[0]
        infer_ms = (time.perf_counter() - start) * 1000.0
        frame_hw = (int(image.shape[0]), int(image.shape[1]))
        low = low.float().cpu()
        mining = mine(low, frame_hw, self.region_frac, self.window_rule)
        return FrameResult(
            frame_id=frame_id,
            image=image,
            logits=low,
            infer_hw=size,
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
        """Take the newest frame, infer in a thread, hand the result on; forever.

        Two stages: inference, and handling (storing the candidate, encoding a preview), joined
        by a one-slot queue, so the next frame's inference overlaps the last one's handling.
        Every inferred frame is handled (the queue applies back-pressure, it drops nothing).
        """
        results: asyncio.Queue[FrameResult] = asyncio.Queue(maxsize=1)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._handle_results(results, handle, on_error))
            await self._infer_frames(mailbox, results, on_error)

    def _begin(self) -> None:
        self._in_flight += 1
        self.idle.clear()

    def _end(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self.idle.set()

    async def _infer_frames(
        self,
        mailbox: LatestMailbox[CameraFrame],
        results: asyncio.Queue[FrameResult],
        on_error: Callable[[str], Awaitable[None]],
    ) -> None:
        while True:
            frame_id, image = await mailbox.get()
            self._begin()
            try:
                result = await asyncio.to_thread(self.process, frame_id, image)
            except (ValueError, RuntimeError) as exc:
                self.errors += 1
                logger.warning("inference failed on frame %s: %s", frame_id, exc)
                self._end()
                await on_error(f"inference failed on frame {frame_id}: {exc}")
                continue
            except BaseException:
                self._end()
                raise
            self.processed += 1
            await results.put(result)

    async def _handle_results(
        self,
        results: asyncio.Queue[FrameResult],
        handle: Callable[[FrameResult], Awaitable[None]],
        on_error: Callable[[str], Awaitable[None]],
    ) -> None:
        while True:
            result = await results.get()
            try:
                await handle(result)
            except Exception as exc:  # e.g. a full disk: report, keep inferring
                logger.exception("handling frame %s failed", result.frame_id)
                await on_error(f"frame {result.frame_id}: {exc.__class__.__name__}: {exc}")
            finally:
                self._end()
