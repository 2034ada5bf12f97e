"""The simulated annotator of ``ars bench annotation``: a person's hands on the real editor
(clicks, drags, polygons, each counted) and a fixed, simple strategy.

Strategy, fixed and simple (``full``): Prefill, then scribble inside the largest wrong
connected area with its true class and Fill; when the Fill does not fix at least half of that
area (or lowers the accuracy), Undo and outline the area with the Polygon (a Brush dab for an
area too small to outline). ``baseline``: the same annotator with the Brush and Polygon only (no
prefill, no fill), outlining the largest wrong area each time. ``whole_fill``: ``full`` with the
editor's "stop at edges" off, the Fill the editor had first (the scribbles relabel the whole
crop), for the before/after figure of that change. A stroke is one gesture on the canvas (a drag,
a dab, a whole polygon); a click is every press (buttons, palette, polygon vertices, strokes).
The labels are read from the editor's draft in localStorage after each step (as the page keeps
them), never written. Only the ``full`` pass saves.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ars.bench._harness import r
from ars.bench.annotator_plan import Target, accuracy, depth, largest_wrong, polygon, scribble

MAX_STROKES = 40  # default: a region still wrong after this many is reported as not reached
BRUSH = 8  # the editor's default brush size
MIN_POLYGON_AREA = 24  # smaller wrong areas get a brush dab


@dataclass
class RegionResult:
    region_id: str
    strokes: int = 0
    clicks: int = 0
    seconds: float = 0.0
    accuracy: float = 0.0
    tools: dict[str, int] = field(default_factory=dict)
    reached: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "region_id": self.region_id, "strokes": self.strokes, "clicks": self.clicks,
            "seconds": r(self.seconds), "accuracy": r(self.accuracy, 4), "reached": self.reached,
            "tools": self.tools,
        }  # fmt: skip


class PageAnnotator:
    """The person's hands on the editor: clicks, drags and polygons, each counted."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.canvas = page.locator("#editor-canvas")
        self.result = RegionResult("")
        self.tool = "brush"
        self.cls = 0
        self.size = BRUSH

    async def open(self, region_id: str) -> None:
        """Pick the region in the queue (not counted: it is where the work starts)."""
        from playwright.async_api import expect

        self.result = RegionResult(region_id)
        await self.page.locator(f'#region-queue li[data-region-id="{region_id}"]').click()
        status = self.page.locator("#editor-status")
        await expect(status).to_have_text(re.compile(rf"^{region_id}: \d+×\d+"), timeout=20_000)

    async def labels(self, shape: tuple[int, int]) -> np.ndarray:
        """The editor's current labels (its draft; all ignore before the first change)."""
        raw = await self.page.evaluate(
            "id => localStorage.getItem('ars-draft-' + id)", self.result.region_id
        )
        if not raw:
            return np.full(shape, 255, np.uint8)
        data = json.loads(raw)
        return np.frombuffer(base64.b64decode(data["labels"]), np.uint8).reshape(shape)

    async def click(self, selector: str) -> None:
        await self.page.locator(selector).click()
        self.result.clicks += 1

    async def set_tool(self, tool: str) -> None:
        if tool != self.tool:
            await self.click(f"#tool-{tool}")
            self.tool = tool

    async def set_class(self, cls: int) -> None:
        if cls != self.cls:
            await self.click(f"#class-{cls}")
            self.cls = cls

    async def set_size(self, size: int) -> None:
        if size != self.size:
            await self.page.locator("#brush-size").fill(str(size))
            await self.page.locator("#brush-size").blur()
            self.result.clicks += 1
            self.size = size

    async def _xy(self, points: list[tuple[int, int]]) -> list[tuple[float, float]]:
        await self.canvas.scroll_into_view_if_needed()
        box = await self.canvas.bounding_box()
        sx, sy = box["width"] / self.shape[1], box["height"] / self.shape[0]
        return [(box["x"] + (x + 0.5) * sx, box["y"] + (y + 0.5) * sy) for x, y in points]

    async def drag(self, tool: str, points: list[tuple[int, int]]) -> None:
        """One stroke: press at the first point, drag through the rest, release."""
        await self.set_tool(tool)
        xy = await self._xy(points)
        mouse = self.page.mouse
        await mouse.move(*xy[0])
        await mouse.down()
        for x, y in xy[1:]:
            await mouse.move(x, y, steps=8)
        await mouse.up()
        self.result.strokes += 1
        self.result.clicks += 1
        self.result.tools[tool] = self.result.tools.get(tool, 0) + 1

    async def outline(self, vertices: list[tuple[int, int]]) -> None:
        """One polygon: a click per vertex, Enter to close and fill. A click within 8 screen
        pixels of the first vertex closes the polygon in the editor, so the annotator leaves out
        the vertices that near the first one (as a person closing by the first vertex does)."""
        await self.set_tool("polygon")
        box = await self.canvas.bounding_box()
        near = 10.0 * self.shape[1] / box["width"] if box else 5.0  # 8 px + margin, in pixels
        x0, y0 = vertices[0]
        vertices = [vertices[0]] + [
            (x, y) for x, y in vertices[1:] if (x - x0) ** 2 + (y - y0) ** 2 > near**2
        ]
        if len(vertices) < 3:
            return
        for x, y in await self._xy(vertices):
            await self.page.mouse.click(x, y)
        await self.page.keyboard.press("Enter")
        self.result.strokes += 1
        self.result.clicks += len(vertices) + 1
        self.result.tools["polygon"] = self.result.tools.get("polygon", 0) + 1

    shape: tuple[int, int] = (0, 0)


async def _fix_by_hand(hand: PageAnnotator, target: Target) -> None:
    """Outline the wrong area with the polygon, or dab it with a brush of its thickness."""
    await hand.set_class(target.cls)
    vertices = polygon(target.mask) if target.area >= MIN_POLYGON_AREA else []
    if len(vertices) >= 3:
        await hand.outline(vertices)
        return
    size = max(1, min(40, 2 * depth(target.mask) + 1))
    await hand.set_size(size)
    await hand.drag("brush", scribble(target.mask, size // 2))


FILL_FIXES = 0.5  # a Fill is kept when it fixes at least this share of the area scribbled in


async def label_region(
    hand: PageAnnotator,
    truth: np.ndarray,
    *,
    full: bool,
    target: float,
    shots: Path | None,
    max_strokes: int = MAX_STROKES,
) -> RegionResult:
    """Label the open region until ``target`` accuracy or ``max_strokes``; the caller saves."""
    hand.shape = truth.shape
    t0 = time.perf_counter()
    step = 0

    async def picture(caption: str = "") -> None:
        """The canvas as the person sees it, captioned with the strokes so far."""
        nonlocal step
        if shots is not None:
            caption = caption or f"{hand.result.strokes} stroke{'s' * (hand.result.strokes != 1)}"
            await hand.canvas.screenshot(path=str(shots / f"step{step:02d}_{caption}.png"))
            step += 1

    await picture("region")
    if full:
        await hand.click("#btn-prefill")
        await picture("prefill")
    labels = await hand.labels(truth.shape)
    acc = accuracy(labels, truth)
    failed: list[np.ndarray] = []  # areas a stroke could not fix: the next largest comes first
    while acc < target and hand.result.strokes < max_strokes:
        wrong = largest_wrong(labels, truth, failed)
        if wrong is None:
            break
        if full:
            await hand.set_size(BRUSH)
            await hand.set_class(wrong.cls)
            await hand.drag("scribble", scribble(wrong.mask, BRUSH // 2))
            await hand.click("#btn-fill")
            filled = await hand.labels(truth.shape)
            fixed = int((filled[wrong.mask] == wrong.cls).sum())
            if accuracy(filled, truth) > acc and fixed >= FILL_FIXES * wrong.area:
                labels, acc = filled, accuracy(filled, truth)
                await picture()
                continue
            await hand.click("#btn-undo")  # the fill made it worse: take it back, do it by hand
        await _fix_by_hand(hand, wrong)
        labels = await hand.labels(truth.shape)
        acc = accuracy(labels, truth)
        if (labels[wrong.mask] == wrong.cls).sum() < FILL_FIXES * wrong.area:
            failed.append(wrong.mask)
        await picture()
    res = hand.result
    res.seconds = time.perf_counter() - t0
    res.accuracy = acc
    res.reached = acc >= target
    return res
