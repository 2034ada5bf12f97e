"""The whole loop in a real browser, as an operator does it, on a simulated robot.

Embedded broker (in the test), ``ars server``, ``ars robot`` and ``ars web`` as subprocesses with
their own MQTT users, Debian's headless chromium driven by Playwright. Through the page only:
Start Segmentation (frame and mask change), Stop, Transfer Data, Start Annotation (the hardest
region painted with the brush, another filled from scribbles of two classes; the classes and
places an operator would pick come from the simulator's ground truth), Save, Stop Annotation,
Start FineTune (progress to 100 %, loss curve drawn), Transfer Model (the robot's model version
in the status bar changes). The server runs with ``gate = false``: the page's Transfer Model
sends no ``force``, and a 40-iteration fine-tune on two regions need not beat the base on rural.

Screenshots of the main view and the editor go to the test's tmp dir; set
``ARS_UI_SCREENSHOTS=docs`` to also write them as ``docs/ui_main.png`` and ``docs/ui_editor.png``.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import Page, ViewportSize, async_playwright, expect

from broker.embedded import free_port
from models.checkpoint import load_checkpoint
from simulator.oracle import OracleAnnotator
from tests.helpers.brokers import BrokerHandle
from tests.helpers.layout import WIDTHS, check_layout
from tests.helpers.loop import SERVER as LOOP_SERVER
from tests.helpers.loop import base_checkpoint
from tests.helpers.server import Peer
from tests.helpers.ui import (
    INFER_HW,
    RID,
    Clock,
    busy_classes,
    canvas_rgba,
    class_key,
    colour_pixels,
    decode_mask,
    launch_chromium,
    plan_strokes,
    run_agents,
    stroke,
    write_config,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ITERATIONS = 40
BRUSH_RADIUS = 4  # the editor's default brush size is 8
LOSS_BLUE = (88, 166, 255)  # charts.js draws the loss curve in #58a6ff
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The loop tests' tiny base (trained once per session on urban frames: it segments urban
    scenes passably and rural ones badly, the gap the loop closes) and its version."""
    path = base_checkpoint(tmp_path_factory)
    return path, load_checkpoint(path)[1].version


def publish_screenshots(shots: Path, target: str | None) -> None:
    """Copy the screenshots to ``target`` (e.g. ``docs``) when asked."""
    if not target:
        return
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("ui_main.png", "ui_editor.png"):
        (out / name).write_bytes((shots / name).read_bytes())


async def click(page: Page, cmd: str, timeout: float = 15_000) -> None:
    """Click a command button once the page enables it."""
    button = page.locator(f"#btn-{cmd}")
    await expect(button).to_be_enabled(timeout=timeout)
    await button.click()


async def answered(page: Page, cmd: str, word: str = "done", timeout: float = 20_000) -> str:
    """The button's answer once it starts with ``word`` (done, accepted, ...)."""
    answer = page.locator(f"#answer-{cmd}")
    await expect(answer).to_have_text(re.compile(rf"^{word}:"), timeout=timeout)
    return await answer.inner_text()


def frame_index(view_info: str) -> int:
    """The frame index from '#view-info' ('drive-s3-w320x240-k12-i17 · base · 12 ms')."""
    m = re.search(r"-i(\d+) ", view_info)
    assert m, view_info
    return int(m.group(1))


async def test_whole_loop_in_the_browser(
    broker: BrokerHandle, base_model: tuple[Path, str], tmp_path: Path
) -> None:
    clock = Clock()
    shots = tmp_path / "shots"
    shots.mkdir()
    web_port = free_port()
    config = write_config(
        tmp_path / "ars.toml",
        base_model[0],
        web_port=web_port,
        iterations=ITERATIONS,
        lr=LOOP_SERVER["lr"],  # the loop tests' rate for the tiny net
    )
    async with (
        run_agents(broker, config, tmp_path) as agents,
        async_playwright() as pw,
    ):
        await agents.wait_listening(web_port)
        browser = await launch_chromium(pw)
        base_url = f"http://127.0.0.1:{web_port}"
        context = await browser.new_context(
            viewport=VIEWPORT, device_scale_factor=1, base_url=base_url
        )
        page = await context.new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))
        try:
            await _loop(page, broker, base_model[1], shots, clock)
        except BaseException:
            with contextlib.suppress(Exception):
                await page.screenshot(path=str(tmp_path / "failure.png"))
            agents.check_alive()
            print(f"steps: {clock}\n{agents.tails()}")
            raise
        finally:
            await browser.close()
        assert not page_errors, page_errors
        agents.check_alive()
    # SIGTERM stops each agent cleanly, as `ars up` and Ctrl-C expect
    assert agents.exit_codes == {"server": 0, "robot": 0, "web": 0}, agents.tails()
    print(f"steps: {clock}")
    publish_screenshots(shots, os.environ.get("ARS_UI_SCREENSHOTS"))


async def _loop(
    page: Page, broker: BrokerHandle, base_version: str, shots: Path, clock: Clock
) -> None:
    await page.goto("/")
    await expect(page.locator("#status-conn")).to_have_text("connected", timeout=10_000)
    # The agents import torch and load the model: give them time to come online.
    await expect(page.locator("#status-online")).to_have_text("online", timeout=90_000)
    await expect(page.locator("#status-server")).to_have_text("online", timeout=90_000)
    await expect(page.locator("#status-model")).to_have_text(base_version)
    clock.mark("online")

    # --- Start Segmentation: the camera frame and the mask change --------------------------
    await click(page, "start_segmentation")
    await answered(page, "start_segmentation")
    info = page.locator("#view-info")
    await expect(info).to_contain_text(base_version, timeout=15_000)
    frame_a = await canvas_rgba(page.locator("#view-frame"))
    mask_a = await canvas_rgba(page.locator("#view-mask"))
    first = frame_index(await info.inner_text())
    await expect(info).not_to_contain_text(f"-i{first} ", timeout=10_000)
    await page.wait_for_timeout(600)  # the next preview is drawn a moment after its header shows
    frame_b = await canvas_rgba(page.locator("#view-frame"))
    mask_b = await canvas_rgba(page.locator("#view-mask"))
    assert frame_a.shape == mask_a.shape == (*INFER_HW, 4)  # previews come at the inference size
    assert frame_a[..., :3].std() > 10, "the camera view is flat"
    assert not np.array_equal(frame_a, frame_b), "the camera frame did not change"
    assert not np.array_equal(mask_a, mask_b), "the mask view did not change"
    assert not np.array_equal(frame_b, mask_b), "the mask view shows no segmentation overlay"
    await expect(page.locator("#legend li.present").first).to_be_visible()
    # drive on into the rural stretch (switch_at = 12 frames) so hard regions exist
    await expect(info).to_contain_text(re.compile(r"-i(2[4-9]|[3-9]\d|\d{3,}) "), timeout=30_000)
    clock.mark("segmented")

    # --- Stop, Transfer Data ---------------------------------------------------------------
    await click(page, "stop_segmentation")
    await answered(page, "stop_segmentation")
    await click(page, "transfer_data")
    done = await answered(page, "transfer_data", timeout=30_000)
    sent = re.search(r'"regions":(\d+)', await _last_log(page, "transfer_data"))
    assert sent, done
    regions = int(sent[1])
    assert regions >= 2, done
    clock.mark("transferred")

    # --- Start Annotation: the editor opens on the hardest region --------------------------
    await click(page, "start_annotation")
    editor = page.locator("#editor")
    await expect(editor).to_be_visible(timeout=15_000)
    await expect(page.locator("#region-queue li")).to_have_count(regions, timeout=15_000)
    progress = page.locator("#editor-progress")
    await expect(progress).to_have_text(f"0 of {regions} done")
    status = page.locator("#editor-status")
    canvas = page.locator("#editor-canvas")

    # What the operator sees in each crop: the simulator's ground truth for its frame and box.
    truth = await _truths(broker)

    # region 1: the brush, along the largest class of the crop
    first_id = await _current_region(page)
    await expect(status).to_have_text(re.compile(rf"^{first_id}: \d+×\d+"), timeout=15_000)
    await page.locator("#zoom-in").click()
    await page.locator("#zoom-in").click()
    await expect(page.locator("#zoom-value")).to_have_text("4×")
    await page.locator("#label-opacity").fill("70")
    await page.locator("#label-opacity").blur()  # number keys do not pick classes in an input
    truth1 = truth[first_id]
    h1, w1 = truth1.shape
    (brush,) = plan_strokes(truth1, 1, margin=BRUSH_RADIUS + 1)
    await _pick_class(page, brush.cls)
    await stroke(page, canvas, brush.fractions(w1, h1))
    await page.locator("#btn-save").click()
    await expect(progress).to_have_text(f"1 of {regions} done", timeout=15_000)

    # region 2: Save moved on to the next region; the operator picks the busiest scene in the
    # queue instead, scribbles its two largest classes and fills the rest from them
    await expect(
        page.locator(f'#region-queue li.current[data-region-id="{first_id}"]')
    ).to_have_count(0, timeout=15_000)
    auto_next = await _current_region(page)
    await expect(status).to_have_text(re.compile(rf"^{auto_next}: \d+×\d+"), timeout=15_000)
    plans = {rid: plan_strokes(t, 2, margin=BRUSH_RADIUS + 1) for rid, t in truth.items()}
    second_id = max(
        (rid for rid, p in plans.items() if rid != first_id and len(p) == 2),
        key=lambda rid: (busy_classes(truth[rid]), rid == auto_next),
    )
    if second_id != auto_next:
        await page.locator(f'#region-queue li[data-region-id="{second_id}"]').click()
    await expect(status).to_have_text(re.compile(rf"^{second_id}: \d+×\d+"), timeout=15_000)
    truth2 = truth[second_id]
    h2, w2 = truth2.shape
    scribbles = plans[second_id]
    await page.locator("#tool-scribble").click()
    for planned in scribbles:
        await _pick_class(page, planned.cls)
        await stroke(page, canvas, planned.fractions(w2, h2))
    await page.locator("#btn-fill").click()
    await expect(status).to_contain_text("filled from scribbles")
    await page.locator("#editor").evaluate("e => e.scrollIntoView({block: 'start'})")
    await page.screenshot(path=str(shots / "ui_editor.png"))
    await page.locator("#btn-save").click()
    await expect(progress).to_have_text(f"2 of {regions} done", timeout=15_000)
    clock.mark("annotated")

    # both masks reached the server, with the painted classes where they were painted
    brushed = decode_mask(await _get_png(page, first_id))
    assert brushed.shape == truth1.shape
    assert set(np.unique(brushed).tolist()) == {brush.cls, 255}
    mid = (brush.x0 + brush.x1) // 2
    assert brushed[brush.y, mid] == brush.cls and brushed[brush.y, brush.x0 + 1] == brush.cls
    painted = brushed != 255
    assert 6 * (brush.x1 - brush.x0) < painted.sum() < 11 * (brush.x1 - brush.x0)  # 8 px wide
    assert (truth1[painted] == brush.cls).mean() > 0.95, "the brush painted outside its stroke"
    filled = decode_mask(await _get_png(page, second_id))
    assert filled.shape == truth2.shape
    classes = {planned.cls for planned in scribbles}
    values, counts = np.unique(filled, return_counts=True)
    share = dict(zip(values.tolist(), (counts / filled.size).round(3).tolist(), strict=True))
    assert set(share) <= {*classes, 255}, share
    assert share.get(255, 0) < 0.05, f"Fill left pixels unlabelled: {share}"
    for planned in scribbles:
        assert filled[planned.y, (planned.x0 + planned.x1) // 2] == planned.cls
    of_two = np.isin(truth2, list(classes))
    agreement = float((filled[of_two] == truth2[of_two]).mean())
    # one stroke per class is a sparse hint: growing from it follows colour edges, which are
    # weak between rural road and terrain, so ask only for clearly better than a coin toss
    assert agreement > 0.55, f"Fill agrees with the truth on {agreement:.0%} only: {share}"
    print(f"scribble fill: {share}, agreement with the truth {agreement:.2f}")
    np.savez_compressed(shots / "fill.npz", truth=truth2, filled=filled)

    # --- Stop Annotation, Start FineTune ---------------------------------------------------
    await click(page, "stop_annotation")
    await answered(page, "stop_annotation")
    await expect(editor).to_be_hidden()
    await click(page, "start_finetune")
    await expect(page.locator("#ft-progress")).to_have_attribute(
        "data-percent", "100", timeout=120_000
    )
    await expect(page.locator("#ft-progress-text")).to_contain_text("done:")
    await answered(page, "start_finetune")
    width = await page.locator("#ft-progress-bar").evaluate("b => b.style.width")
    assert width == "100%"
    loss = await canvas_rgba(page.locator("#loss-chart"))
    assert colour_pixels(loss, LOSS_BLUE) > 100, "no loss curve on the chart"
    miou = await canvas_rgba(page.locator("#miou-chart"))
    assert (miou[..., 3] > 0).sum() > 2000, "the mIoU chart is blank"
    version = (await page.locator("#model-history tr").first.get_attribute("data-version")) or ""
    assert version and version != base_version
    clock.mark("finetuned")

    # --- Transfer Model: the robot runs the new version -------------------------------------
    await click(page, "transfer_model")
    await expect(page.locator("#status-model")).to_have_text(version, timeout=30_000)
    await answered(page, "transfer_model")
    await expect(page.locator(f'#model-history tr[data-version="{version}"]')).to_contain_text(
        "rover1", timeout=10_000
    )
    clock.mark("model transferred")

    # the main view, live again with the new model
    await click(page, "start_segmentation")
    await expect(info).to_contain_text(version, timeout=15_000)
    await page.wait_for_timeout(800)
    await page.evaluate("() => window.scrollTo(0, 0)")
    await page.screenshot(path=str(shots / "ui_main.png"))
    await click(page, "stop_segmentation")
    await answered(page, "stop_segmentation")
    # each figure of the fine-tune names the set it is measured on, under the chart
    await expect(page.locator("#miou-sets li").first).to_contain_text("labelled regions")
    # phone, tablet and desktop widths with real frames, figures and a model history
    for width in WIDTHS:
        await check_layout(page, width, shots / f"ui_layout_{width}.png")
    await page.set_viewport_size(VIEWPORT)
    clock.mark("done")


async def _pick_class(page: Page, cls: int) -> None:
    """Its number key when it has one, else its palette button."""
    key = class_key(cls)
    if key is None:
        await page.locator(f"#class-{cls}").click()
    else:
        await page.keyboard.press(key)
    await expect(page.locator(f"#class-{cls}")).to_have_class(re.compile(r"\bactive\b"))


async def _truths(broker: BrokerHandle) -> dict[str, np.ndarray]:
    """Ground truth of every stored region's crop (list_regions on ars/server/cmd)."""
    async with Peer(broker.mqtt("operator"), ["ars/server/reply/#"], "ui-test") as peer:
        reply, _ = await peer.request("list_regions", {"robot_id": RID})
    assert reply["ok"], reply
    oracle = OracleAnnotator()
    return {
        r["region_id"]: oracle.label_crop(r["frame_id"], tuple(r["box"]))
        for r in reply["data"]["regions"]
    }


async def _current_region(page: Page) -> str:
    current = page.locator("#region-queue li.current")
    await expect(current).to_have_count(1, timeout=15_000)
    rid = await current.get_attribute("data-region-id")
    assert rid
    return rid


async def _get_png(page: Page, region_id: str) -> bytes:
    response = await page.request.get(f"/api/regions/{region_id}/annotation.png")
    assert response.ok, await response.text()
    return await response.body()


async def _last_log(page: Page, cmd: str) -> str:
    line = page.locator("#event-log .log-line", has_text=f"done [{cmd}]").last
    await expect(line).to_be_visible()
    return await line.inner_text()
