"""The page at phone, tablet and desktop widths (390, 820, 1280 px), freshly opened: only
``ars web`` on a real broker, in Debian's chromium; a screenshot at each width and the layout
facts of tests/helpers/layout.py. The whole loop checks them again with real frames and figures
(tests/test_ui_e2e.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from broker.embedded import free_port
from tests.helpers.brokers import BrokerHandle
from tests.helpers.faults import end, spawn_cli
from tests.helpers.layout import WIDTHS, check_layout
from tests.helpers.ui import launch_chromium
from tests.test_faults_web import wait_http

pytestmark = [pytest.mark.browser]


async def test_page_layout_at_phone_tablet_and_desktop_widths(
    broker: BrokerHandle, tmp_path: Path
) -> None:
    port = free_port()
    argv = ["web", "--data-dir", str(tmp_path / "web"), "--port", str(port)]
    web = await spawn_cli(argv, tmp_path / "web.log", {"ARS_MQTT__URL": broker.url("operator")})
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            try:
                page = await browser.new_page(base_url=f"http://127.0.0.1:{port}")
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto("/")
                await expect(page.locator("#status-conn")).to_have_text("connected")
                for width in WIDTHS:
                    facts = await check_layout(page, width, tmp_path / f"layout-{width}.png")
                    if width == 390:  # a phone stacks the camera above the segmentation
                        assert facts["mask"]["y"] >= facts["camera"]["y"] + facts["camera"]["h"]
                    else:  # wider screens show them side by side
                        assert abs(facts["mask"]["y"] - facts["camera"]["y"]) < 2
                assert not errors, errors
            finally:
                await browser.close()
    finally:
        await end(web)
    assert all((tmp_path / f"layout-{w}.png").stat().st_size > 1000 for w in WIDTHS)
    if os.environ.get("ARS_UI_SCREENSHOTS"):
        out = Path(os.environ["ARS_UI_SCREENSHOTS"])
        for w in WIDTHS:
            (out / f"ui_layout_{w}.png").write_bytes((tmp_path / f"layout-{w}.png").read_bytes())
