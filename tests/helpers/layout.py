"""Layout facts of the page at one width, measured in the browser: what a person on a phone, a
tablet or a desktop would see go wrong (a thumbnail camera, labels running together, unreadable
chart text, a page wider than the screen, buttons on top of each other).

(No tests here; used by tests/test_ui_layout.py and tests/test_ui_e2e.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WIDTHS = (390, 820, 1280)  # phone, tablet, desktop (CSS pixels)

# One script, run in the page: boxes of the elements the facts are about.
_MEASURE = """() => {
  const box = (el) => { const r = el.getBoundingClientRect();
    return {x: r.x, y: r.y, w: r.width, h: r.height}; };
  const q = (sel) => [...document.querySelectorAll(sel)].filter((e) => e.offsetParent !== null);
  const charts = q(".charts canvas").map((c) => ({
    ...box(c), pixels: c.width, css: c.clientWidth, dpr: window.devicePixelRatio || 1 }));
  return {
    viewport: window.innerWidth,
    scroll_width: document.documentElement.scrollWidth,
    camera: box(document.getElementById("view-frame")),
    mask: box(document.getElementById("view-mask")),
    caption: q("#view-mask + figcaption > *").map(box),
    buttons: q(".button-row button").map(box),
    status: q("#statusbar li").map(box),
    charts,
  };
}"""


def overlap(a: dict[str, float], b: dict[str, float]) -> float:
    """Area two boxes share (0 when they only touch)."""
    w = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
    return max(0.0, w) * max(0.0, h)


def _no_overlaps(name: str, boxes: list[dict[str, float]]) -> None:
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert overlap(a, b) < 1.0, f"{name} overlap: {a} {b}"


async def check_layout(page: Any, width: int, shot: Path) -> dict[str, Any]:
    """Resize to ``width``, screenshot to ``shot``, assert the layout facts; returns them."""
    await page.set_viewport_size({"width": width, "height": 900})
    await page.wait_for_timeout(300)  # charts redraw at their new size on the next frame
    await page.screenshot(path=str(shot), full_page=True)
    m: dict[str, Any] = await page.evaluate(_MEASURE)
    assert m["scroll_width"] <= m["viewport"] + 1, f"page wider than the screen at {width}: {m}"
    cam, mask = m["camera"], m["mask"]
    # camera and segmentation: the same size, side by side or stacked, never a thumbnail
    assert abs(cam["w"] - mask["w"]) <= 2, f"camera {cam} vs segmentation {mask} at {width}"
    assert overlap(cam, mask) < 1.0, (cam, mask)
    assert cam["w"] >= min(0.4 * width, 300), f"camera is a thumbnail at {width}: {cam}"
    _no_overlaps("segmentation caption", m["caption"])
    _no_overlaps("command buttons", m["buttons"])
    _no_overlaps("status bar", m["status"])
    for chart in m["charts"]:
        # drawn at its on-screen size, so its 12 px text shows at 12 px, not scaled down
        assert abs(chart["pixels"] - round(chart["css"] * chart["dpr"])) <= 2, chart
        assert chart["w"] >= 250, f"chart too narrow to read at {width}: {chart}"
    _no_overlaps("charts", m["charts"])
    return m
