"""The robot's inference runtime: onnxruntime when it is installed and agrees with torch.

``robot.runtime``: ``torch`` runs the torch model; ``onnx`` requires onnxruntime (a model it
cannot run is refused); ``auto`` (default) uses onnxruntime when it is installed and its
logits match torch's, and torch otherwise (logged once per model, never an error).

Where the export happens: on the robot. The checkpoint stays the one artifact that is offered,
hashed, signed and kept as current/previous, so nothing new crosses the wire or needs a
signature, and the graph always matches the robot's own exporter and onnxruntime. An export
costs tens of seconds of exporter work, so it is done once per architecture and number of
classes, in a child process (no interpreter lock shared with the frames), and cached in
``robot.onnx_cache``. Each model then costs a fraction of a second: its weights are written
into the cached graph (`models.onnx_graph.with_weights`), a session is built, and its logits
on a probe frame are checked against torch (within `PROBE_TOLERANCE`). Those steps run each
between two of the worker's frames (`ModelSlot.run_between_frames`), like the other install
steps, so frames keep flowing during a hot swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import torch

import models
from common.errors import ModelError
from models.onnx_graph import fill_weights, graph_weights
from models.onnx_session import OnnxModel, check_against, onnxruntime_installed
from robot_agent.inference import LoadedModel, ModelSlot

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Bumped when the exported graph's layout changes, so old cached graphs are not reused.
GRAPH_FORMAT: Final = 1
#: An export that takes longer than this is abandoned (the robot stays on torch).
EXPORT_TIMEOUT_S: Final = 600.0
#: How often a robot waiting for another process's export looks at its lock.
LOCK_POLL_S: Final = 0.5


def default_cache(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/ars/onnx`` (``~/.cache/ars/onnx``): shared by every data folder of
    the user, so a graph is exported once per machine, architecture and library version."""
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ars" / "onnx"


def _cache_name(arch: str, classes: int) -> str:
    import onnx

    raw = f"{arch}-{classes}c-torch{torch.__version__}-onnx{onnx.__version__}-g{GRAPH_FORMAT}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw) + ".onnx"


class Runtime:
    """Gives each model the runtime ``robot.runtime`` asks for (see the module doc)."""

    def __init__(
        self,
        mode: str,
        *,
        cache: Path,
        threads: int,
        infer_hw: tuple[int, int],
        device: str = "cpu",
        slot: ModelSlot | None = None,
    ) -> None:
        if mode not in ("auto", "onnx", "torch"):
            raise ValueError(f"runtime must be auto, onnx or torch, got {mode!r}")
        self.mode = mode
        self.cache = cache
        self.threads = threads
        self.infer_hw = infer_hw
        self.device = device
        #: The slot whose frames the steps take turns with (None: run them directly).
        self.slot = slot
        self._export_lock = asyncio.Lock()

    async def _step(self, fn: Callable[..., T], *args: Any) -> T:
        if self.slot is None:
            return await asyncio.to_thread(fn, *args)
        return await asyncio.to_thread(self.slot.run_between_frames, fn, *args)

    async def prepare(self, loaded: LoadedModel) -> LoadedModel:
        """``loaded`` with its onnxruntime session, or as it is (torch). ModelError only when
        the mode is ``onnx`` and onnxruntime cannot run this model."""
        if self.mode == "torch" or (self.mode == "auto" and self.device != "cpu"):
            return dataclasses.replace(loaded, onnx=None)  # auto: a GPU runs torch
        try:
            if not onnxruntime_installed():
                raise ModelError("onnxruntime is not installed")
            graph = await self.graph(loaded.meta.arch, len(loaded.meta.classes))
            # four steps, each between two frames: none holds a frame back for long
            # (Large at load ~10: 0.1-0.5 s each, 1.0-1.5 s in all)
            weights = await self._step(graph_weights, loaded.model)
            weighted = await self._step(fill_weights, graph, weights)
            del weights
            session = await self._step(OnnxModel, weighted, self.threads)
            onnx_model = await self._step(check_against, session, loaded.model, self.infer_hw)
        except (ModelError, OSError, ImportError) as exc:
            if self.mode == "onnx":
                raise ModelError(f"robot.runtime is onnx: {exc}") from exc
            logger.warning(
                "model %s runs on torch: %s (graph cache %s)", loaded.version, exc, self.cache
            )
            return dataclasses.replace(loaded, onnx=None)
        logger.info("model %s runs on onnxruntime", loaded.version)
        return dataclasses.replace(loaded, onnx=onnx_model)

    async def graph(self, arch: str, classes: int) -> bytes:
        """The exported graph of ``arch`` with ``classes`` outputs: cached, else exported in
        a child process (one export at a time per machine: a lock file in the cache)."""
        path = self.cache / _cache_name(arch, classes)
        async with self._export_lock:
            if not path.is_file():
                await asyncio.to_thread(self.cache.mkdir, parents=True, exist_ok=True)
                lock_fd = await _lock_file(path.with_suffix(".lock"))
                try:
                    if not path.is_file():
                        await self._export(arch, classes, path)
                finally:
                    os.close(lock_fd)  # releases the flock
            return await asyncio.to_thread(path.read_bytes)

    async def _export(self, arch: str, classes: int, path: Path) -> None:
        logger.info("exporting the %s graph to %s (once per architecture)", arch, path)
        argv, env = _export_command(arch, classes, path, self.infer_hw)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), EXPORT_TIMEOUT_S)
        except BaseException as exc:  # cancelled or timed out: the child must not outlive us
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise ModelError(f"ONNX export of {arch} took over {EXPORT_TIMEOUT_S:g} s") from exc
            raise
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ModelError(f"ONNX export of {arch} exited {proc.returncode}: {tail[0]}")


def _export_command(
    arch: str, classes: int, path: Path, infer_hw: tuple[int, int]
) -> tuple[list[str], dict[str, str]]:
    """The child's command line and environment: it imports this very tree, wherever the
    robot was started from."""
    root = str(Path(next(iter(models.__path__))).resolve().parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    h, w = infer_hw
    argv = [
        sys.executable, "-m", "models.onnx_graph",
        "--arch", arch, "--classes", str(classes), "--out", str(path.resolve()),
        "--height", str(h), "--width", str(w),
    ]  # fmt: skip
    return argv, env


def _try_lock(path: Path) -> int | None:
    """An exclusive flock on ``path`` if free now: its descriptor (close to release), else None."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _lock_file(path: Path) -> int:
    """Wait (cancellably) for the lock another process's export holds; its descriptor."""
    while (fd := _try_lock(path)) is None:  # noqa: ASYNC110 (held by another process)
        await asyncio.sleep(LOCK_POLL_S)
    return fd
