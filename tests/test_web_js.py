"""The page's pure JS modules (envelope parsing, region growing) run under Node."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from common import envelope

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
NODE = shutil.which("node")


def run_js(body: str) -> object:
    """Run an ES module snippet that prints one JSON value; return it."""
    if NODE is None:
        pytest.fail("node is not installed: run `make system-deps` (Debian package nodejs)")
    script = (
        "import { edgeThreshold, growRegions, MinHeap } from "
        f"'{(STATIC / 'regiongrow.js').as_uri()}';\n"
        f"import {{ parseEnvelope }} from '{(STATIC / 'envelope.js').as_uri()}';\n{body}"
    )
    out = subprocess.run(
        [NODE, "--experimental-default-type=module", "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def test_js_parses_python_envelope() -> None:
    payload = envelope.encode({"robot_id": "rover1", "fps": 4.5}, [b"\xff\xd8jpeg", b"", b"png!"])
    result = run_js(
        f"const buf = Buffer.from('{base64.b64encode(payload).decode()}', 'base64');\n"
        "const env = parseEnvelope(new Uint8Array(buf).buffer);\n"
        "console.log(JSON.stringify({header: env.header,"
        " parts: env.parts.map((p) => Array.from(p))}));"
    )
    assert result == {
        "header": {"robot_id": "rover1", "fps": 4.5, "v": 1},
        "parts": [list(b"\xff\xd8jpeg"), [], list(b"png!")],
    }
    bad = run_js(
        "let msg = '';\n"
        "try { parseEnvelope(new Uint8Array([65, 82, 83, 69, 0, 0, 0, 99]).buffer); }"
        " catch (e) { msg = e.message; }\nconsole.log(JSON.stringify(msg));"
    )
    assert bad == "bad header length"


def test_js_region_growing_follows_colour_edges() -> None:
    """Two flat halves, one seed each: every pixel takes the class of its own half."""
    result = run_js(
        "const w = 8, h = 5, rgba = new Uint8ClampedArray(w * h * 4);\n"
        "for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {\n"
        "  const i = (y * w + x) * 4, v = x < 5 ? 30 + (x + y) % 3 : 210;\n"
        "  rgba.set([v, v, v, 255], i); }\n"
        "const seeds = new Uint8Array(w * h).fill(255);\n"
        "seeds[2 * w + 0] = 8; seeds[0 * w + 7] = 13;\n"
        "const heap = new MinHeap(2); [5, 1, 4, 1.5, 9, 0].forEach((k, i) => heap.push(k, i));\n"
        "const order = []; while (heap.size) { heap.pop(); order.push(heap.lastKey); }\n"
        "console.log(JSON.stringify({labels: Array.from(growRegions(rgba, w, h, seeds)), order}));"
    )
    assert isinstance(result, dict)
    assert result["order"] == [0, 1, 1.5, 4, 5, 9]
    rows = [result["labels"][y * 8 : (y + 1) * 8] for y in range(5)]
    assert all(row == [8] * 5 + [13] * 3 for row in rows)


def test_js_fill_over_labels_stops_at_edges_and_keeps_the_rest() -> None:
    """A prefilled crop (all class 0): a class-8 seed in the textured left part takes it up to
    the edge (5 of 139 neighbour steps); the bright right part keeps its label (fill: 255)."""
    result = run_js(
        "const w = 16, h = 5, rgba = new Uint8ClampedArray(w * h * 4);\n"
        "for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {\n"
        "  const i = (y * w + x) * 4, v = x < 10 ? 30 + 6 * ((x + y) % 3) : 210;\n"
        "  rgba.set([v, v, v, 255], i); }\n"
        "const seeds = new Uint8Array(w * h).fill(255); seeds[2 * w + 1] = 8;\n"
        "const labels = new Uint8Array(w * h).fill(0);\n"
        "const edge = edgeThreshold(rgba, w, h);\n"
        "const all = growRegions(rgba, w, h, seeds);\n"
        "const local = growRegions(rgba, w, h, seeds, labels, edge);\n"
        "console.log(JSON.stringify({edge, all: Array.from(all), local: Array.from(local)}));"
    )
    assert isinstance(result, dict)
    # texture steps are 6*sqrt(3)..12*sqrt(3) (10.4..20.8); the edge step is 180*sqrt(3) (312)
    assert 10 < result["edge"] < 312
    assert result["all"] == [8] * 80  # without labels one seed takes everything, as before
    rows = [result["local"][y * 16 : (y + 1) * 16] for y in range(5)]
    assert all(row == [8] * 10 + [255] * 6 for row in rows), rows


def test_js_palette_takes_the_hello_class_list() -> None:
    """palette.js holds no class list of its own: the hello's names and colours fill it."""
    from web.ws import hello_classes

    classes = hello_classes()
    result = run_js(
        f"import * as P from '{(STATIC / 'palette.js').as_uri()}';\n"
        "const before = P.CLASS_NAMES.length;\n"
        f"P.setClasses({json.dumps(classes)});\n"
        "console.log(JSON.stringify({before, names: P.CLASS_NAMES, car: P.cssColor(13),"
        " ignore: P.IGNORE}));"
    )
    assert result == {
        "before": 0,
        "names": classes["names"],
        "car": "rgb(0, 0, 142)",
        "ignore": 255,
    }
