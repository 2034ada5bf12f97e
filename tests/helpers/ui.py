"""Helpers for the browser test: the agents as subprocesses
(``ars server``, ``ars robot``, ``ars web``, as ``ars up`` starts them), Debian's chromium, and
pixel checks on the page's canvases.

(No tests here; the module is used by tests/test_ui_e2e.py.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from PIL import Image
from playwright.async_api import Browser, Locator, Playwright

from ars.bench.annotator_plan import erode
from tests.helpers.brokers import BrokerHandle

RID = "rover1"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INFER_HW = (120, 160)  # the robot's inference size, also the server's training size


def write_config(path: Path, model: Path, *, web_port: int, iterations: int, lr: float) -> Path:
    """One TOML file for the three agents: small frames, few iterations, the gate off (the
    page's Transfer Model sends no ``force``, and a short fine-tune may not beat the base)."""
    path.write_text(
        f"""log_level = "INFO"

[robot]
id = "{RID}"
source = "sim:drive"
switch_at = 12
seed = 3
camera_fps = 8.0
width = 320
height = 240
infer_width = {INFER_HW[1]}
infer_height = {INFER_HW[0]}
threads = 1
device = "cpu"
preview_fps = 5.0
model = "{model}"

[server]
iterations = {iterations}
lr = {lr}
batch_size = 4
train_width = {INFER_HW[1]}
train_height = {INFER_HW[0]}
replay_frames = 8
eval_frames = 4
threads = 1
device = "cpu"
gate = false
base_model = "{model}"

[web]
port = {web_port}
""",
        encoding="utf-8",
    )
    return path


@dataclass
class Agents:
    """The running ``ars`` subprocesses and their log files."""

    logs: dict[str, Path] = field(default_factory=dict)
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    exit_codes: dict[str, int | str] = field(default_factory=dict)  # after SIGTERM

    def tails(self, lines: int = 25) -> str:
        out = []
        for name, log in self.logs.items():
            text = log.read_text(encoding="utf-8", errors="replace").splitlines()
            out.append(f"--- ars {name} (last {lines} lines) ---")
            out.extend(text[-lines:])
        return "\n".join(out)

    async def wait_listening(self, port: int, timeout: float = 90.0) -> None:
        """Until ``ars web`` accepts connections (it imports and connects first)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                return
            await asyncio.sleep(0.2)
        pytest.fail(f"ars web does not listen on {port} after {timeout:.0f} s\n{self.tails()}")

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.returncode is not None}
        if dead:
            pytest.fail(f"agents exited early: {dead}\n{self.tails()}")


@contextlib.asynccontextmanager
async def run_agents(broker: BrokerHandle, config: Path, workdir: Path) -> AsyncIterator[Agents]:
    """``ars server``, ``ars robot`` and ``ars web`` with their own MQTT users, as ``ars up``
    runs them; SIGTERM (then SIGKILL after 10 s) on exit."""
    agents = Agents()
    users = {"server": "server", "robot": f"robot-{RID}", "web": "operator"}
    files: list[IO[bytes]] = []
    try:
        for name, user in users.items():
            env = dict(os.environ, ARS_MQTT__URL=broker.url(user), PYTHONUNBUFFERED="1")
            env.pop("ARS_WEB__TOKEN", None)
            log = workdir / f"{name}.log"
            agents.logs[name] = log
            handle = log.open("wb")
            files.append(handle)
            argv = [sys.executable, "-m", "ars.cli", name, "--config", str(config)]
            argv += ["--data-dir", str(workdir / name)]
            agents.procs[name] = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=handle, stderr=asyncio.subprocess.STDOUT
            )
        yield agents
    finally:
        for proc in agents.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in agents.procs.items():
            try:
                agents.exit_codes[name] = await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                agents.exit_codes[name] = "killed after 10 s"
        for file in files:
            file.close()


def require_chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    return CHROMIUM


async def launch_chromium(pw: Playwright) -> Browser:
    """Debian's chromium, headless (never a downloaded browser)."""
    require_chromium()
    return await pw.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )


# --- canvases --------------------------------------------------------------------------------
async def canvas_rgba(canvas: Locator) -> np.ndarray:
    """The canvas's pixels (HxWx4 uint8), read through ``toDataURL`` as the page has drawn them."""
    url = await canvas.evaluate("c => c.toDataURL('image/png')")
    assert isinstance(url, str) and url.startswith("data:image/png;base64,")
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def colour_pixels(rgba: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    """How many opaque pixels are within ``tol`` (per channel) of ``rgb``."""
    diff = np.abs(rgba[..., :3].astype(np.int16) - np.array(rgb, dtype=np.int16)).max(axis=-1)
    return int(((diff <= tol) & (rgba[..., 3] > 0)).sum())


def decode_mask(png: bytes) -> np.ndarray:
    """An annotation PNG (mode L trainIds) as an HxW uint8 array."""
    image = Image.open(io.BytesIO(png))
    assert image.mode == "L", image.mode
    return np.asarray(image)


async def stroke(page: Any, canvas: Locator, points: list[tuple[float, float]]) -> None:
    """Press the mouse at the first point, drag through the others, release (fractions of the
    canvas's box, as a person drags)."""
    await canvas.scroll_into_view_if_needed()
    box = await canvas.bounding_box()
    assert box is not None
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    await page.mouse.move(*xy[0])
    await page.mouse.down()
    for x, y in xy[1:]:
        await page.mouse.move(x, y, steps=6)
    await page.mouse.up()


# --- labelling like a person who sees the scene -------------------------------------------------
SHORTCUT_CLASSES = (0, 1, 2, 4, 5, 8, 9, 10, 11, 13)  # web/static/palette.js: keys 1..9, 0


def class_key(cls: int) -> str | None:
    """The editor's number key for ``cls``, or None (then its palette button is clicked)."""
    return str((SHORTCUT_CLASSES.index(cls) + 1) % 10) if cls in SHORTCUT_CLASSES else None


@dataclass(frozen=True)
class Stroke:
    """A horizontal drag inside one class: crop pixels ``(x0, y)`` to ``(x1, y)``."""

    cls: int
    y: int
    x0: int
    x1: int

    def fractions(self, w: int, h: int) -> list[tuple[float, float]]:
        """Points along the stroke as fractions of the crop (for ``stroke``)."""
        xs = np.linspace(self.x0, self.x1, 4)
        return [((x + 0.5) / w, (self.y + 0.5) / h) for x in xs]


def plan_stroke(truth: np.ndarray, cls: int, margin: int) -> Stroke | None:
    """The longest horizontal run of ``cls`` at least ``margin`` pixels from any other class."""
    inside = erode(truth == cls, margin)
    best: Stroke | None = None
    for y in range(truth.shape[0]):
        row = np.concatenate(([False], inside[y], [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(row))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if best is None or stop - start > best.x1 - best.x0 + 1:
                best = Stroke(cls, y, int(start), int(stop) - 1)
    return best if best is not None and best.x1 - best.x0 >= 6 else None


def busy_classes(truth: np.ndarray, share: float = 0.03) -> int:
    """How many classes cover at least ``share`` of the crop (a busier scene shows more)."""
    counts = np.bincount(truth[truth != 255].ravel(), minlength=256)
    return int((counts >= share * truth.size).sum())


def plan_strokes(truth: np.ndarray, n: int, margin: int) -> list[Stroke]:
    """Strokes for the ``n`` largest classes of the crop, each well inside its class."""
    classes, counts = np.unique(truth[truth != 255], return_counts=True)
    strokes = []
    for cls in classes[np.argsort(-counts)]:
        planned = plan_stroke(truth, int(cls), margin)
        if planned is not None:
            strokes.append(planned)
        if len(strokes) == n:
            break
    return strokes


class Clock:
    """Seconds since the test started, per step, for the report on slow runs."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        self.marks.append((name, round(time.monotonic() - self.start, 1)))

    def __str__(self) -> str:
        return ", ".join(f"{n} {t}s" for n, t in self.marks)
