"""``ars bench annotation``: how many strokes a person needs per region, measured in the real page.

Broker, server, robot (``sim:rural``, the domain the base model was not trained for) and web run
as processes; this process presses Start Segmentation, Stop, Transfer Data and Start Annotation
over MQTT as the page does, then a simulated annotator drives the real editor in Debian's
chromium (Playwright) over the transfer's regions, hardest first. It uses only what a person
uses (Prefill, Scribble and Fill, Brush, Polygon, Undo, the class palette) and stops on a region
when its pixel accuracy against the simulator's ground truth (the person's eyes) reaches
``--target`` (pixels the truth ignores do not count).

The annotator and its strategy: ``ars/bench/annotator.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ars.bench._harness import (
    Observer,
    Proc,
    bench_checkpoint,
    broker,
    json_obj,
    median,
    online,
    r,
    spawn,
    stop,
    wait_port,
)
from ars.bench.annotator import MAX_STROKES, PageAnnotator, RegionResult, label_region
from ars.bench.annotator_plan import accuracy
from broker.embedded import free_port
from common.config import MqttSettings, Settings

RID = "rover1"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MODES = ("baseline", "whole_fill", "full")  # passes over the same regions; the last one saves
DONE = re.compile(r"\bdone\b")  # a saved region's class in the queue


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=48, help="frames to segment first")
    parser.add_argument("--regions", type=int, default=12, help="label at most N regions")
    parser.add_argument("--target", type=float, default=0.95, help="pixel accuracy to reach")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed of the robot")
    parser.add_argument(
        "--max-strokes", type=int, default=MAX_STROKES, help="give a region up after N strokes"
    )
    parser.add_argument("--pictures", type=Path, help="write a per-stroke strip of one region")
    parser.add_argument("--tiny", action="store_true", help="smoke: 1 region, 4 strokes")


async def _truths(b: Any, ids: list[str] | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """The session's regions (hardest first) and each crop's ground truth."""
    from ars.commands.annotate import Requester
    from common.mqtt import MqttLink
    from common.topics import Topics
    from simulator.oracle import OracleAnnotator

    topics = Topics("ars")
    reply_topic = topics.server_reply("bench-annotation")
    settings = MqttSettings(url=b.url("operator"))
    async with MqttLink(
        settings, client_id="bench-annotation", subscriptions=[(reply_topic, 1)]
    ) as link:
        await link.wait_connected(10)
        req = Requester(link, topics, reply_topic, 30.0)
        header, _ = await req.call("list_regions", {"robot_id": RID})
    regions = sorted(header["data"]["regions"], key=lambda x: -float(x["score"]))
    oracle = OracleAnnotator()
    truths = {x["region_id"]: oracle.label_crop(x["frame_id"], tuple(x["box"])) for x in regions}
    return [x["region_id"] for x in regions], truths


async def _annotate(
    web_port: int, order: list[str], truths: dict[str, np.ndarray], args: argparse.Namespace,
    pictures: Path | None,
) -> dict[str, list[RegionResult]]:  # fmt: skip
    from playwright.async_api import async_playwright, expect

    out: dict[str, list[RegionResult]] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1400, "height": 1000}, device_scale_factor=1,
                base_url=f"http://127.0.0.1:{web_port}",
            )  # fmt: skip
            page = await context.new_page()
            for mode in MODES:  # the last one saves
                await page.goto("/")
                await page.evaluate("() => localStorage.clear()")
                await page.reload()
                await expect(page.locator("#editor")).to_be_visible(timeout=60_000)
                await expect(page.locator("#region-queue li")).to_have_count(
                    len(order), timeout=30_000
                )
                await page.locator("#fill-edges").set_checked(mode != "whole_fill")
                hand = PageAnnotator(page)
                results = []
                for i, rid in enumerate(order[: args.regions]):
                    await hand.open(rid)
                    shots = None
                    if pictures is not None and i == 0:
                        shots = pictures / mode
                        shots.mkdir(parents=True, exist_ok=True)
                    res = await label_region(
                        hand,
                        truths[rid],
                        full=mode != "baseline",
                        target=args.target,
                        shots=shots,
                        max_strokes=args.max_strokes,
                    )
                    if mode == "full":
                        await hand.click("#btn-save")
                        item = page.locator(f'#region-queue li[data-region-id="{rid}"]')
                        try:
                            await expect(item).to_have_class(
                                re.compile(r"\bdone\b"), timeout=60_000
                            )
                        except AssertionError as exc:
                            status = await page.locator("#editor-status").inner_text()
                            raise RuntimeError(f"Save of {rid} not done: {status}") from exc
                        res.clicks -= 1  # Save is the end of the work, not a correction
                    results.append(res)
                out[mode] = results
        finally:
            await browser.close()
    return out


async def _run(args: argparse.Namespace, work: Path, prefix: str) -> dict[str, Any]:
    from ars.bench.loop import Operator

    arch = "tiny" if args.tiny else "lraspp_mbv3_large"
    ckpt = bench_checkpoint(work, arch=arch)
    robot_flags = ["--model", str(ckpt), "--source", "sim:rural", "--id", RID,
                   "--seed", str(args.seed)]  # fmt: skip
    if args.tiny:
        robot_flags += ["--size", "320x240", "--infer-size", "160x120"]
    server_flags = ["--base-model", str(ckpt), "--no-gate"]
    procs: list[Proc] = []
    web_port = free_port()
    async with broker("amqtt", work, [RID], prefix) as b:
        topics = b.topics
        obs = Observer([topics.robot_all(RID), topics.server_events, topics.server_state])
        ready = asyncio.Event()
        obs_task = asyncio.create_task(obs.run(MqttSettings(url=b.url("operator")), ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            procs.append(await spawn(
                "server", ["server", "--data-dir", str(work / "server"), *server_flags],
                work / "logs", env=b.env("server"),
            ))  # fmt: skip
            procs.append(await spawn(
                "robot", ["robot", "--data-dir", str(work / "robot"), *robot_flags],
                work / "logs", env=b.env(f"robot-{RID}"),
            ))  # fmt: skip
            procs.append(await spawn(
                "web", ["web", "--data-dir", str(work / "web"), "--port", str(web_port)],
                work / "logs", env=b.env("operator"),
            ))  # fmt: skip

            await obs.wait(online("server/state"), 0, timeout=180)
            await obs.wait(online(f"robots/{RID}/state"), 0, timeout=180)
            await wait_port(web_port, timeout=120, proc=procs[2])
            op = Operator(b, obs)
            await op.press("start_segmentation")
            mark = len(obs.messages)

            def frames_at_least(topic: str, payload: bytes) -> Any:
                d = json_obj(payload) if topic.endswith(f"robots/{RID}/state") else None
                return d if d and int(d.get("frames", 0)) >= args.frames else None

            await obs.wait(frames_at_least, mark, timeout=600)
            await op.press("stop_segmentation")
            _, _, sent = await op.press("transfer_data", timeout=180)
            await op.press("start_annotation")
            order, truths = await _truths(b)
            if not order:
                raise RuntimeError("the transfer sent no regions")
            results = await _annotate(web_port, order, truths, args, args.pictures)
            saved = await _saved_accuracy(b, order[: args.regions], truths)
        finally:
            obs_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await obs_task
            await stop(procs)
    return _summary(args, results, saved, len(order), sent, arch)


async def _saved_accuracy(b: Any, ids: list[str], truths: dict[str, np.ndarray]) -> float:
    """Median accuracy of the masks the server stored (what Save sent, read back)."""
    import io

    from PIL import Image

    from ars.commands.annotate import Requester
    from common.mqtt import MqttLink
    from common.topics import Topics

    topics = Topics("ars")
    reply_topic = topics.server_reply("bench-annotation-check")
    accs = []
    async with MqttLink(
        MqttSettings(url=b.url("operator")), client_id="bench-annotation-check",
        subscriptions=[(reply_topic, 1)],
    ) as link:  # fmt: skip
        await link.wait_connected(10)
        req = Requester(link, topics, reply_topic, 30.0)
        for rid in ids:
            _, parts = await req.call("get_region", {"region_id": rid})
            if len(parts) >= 3 and parts[2]:
                mask = np.asarray(Image.open(io.BytesIO(parts[2])))
                accs.append(accuracy(mask, truths[rid]))
            else:
                accs.append(0.0)
    return median(accs)


def _summary(
    args: argparse.Namespace, results: dict[str, list[RegionResult]], saved: float,
    regions_sent: int, sent: dict[str, Any], arch: str,
) -> dict[str, Any]:  # fmt: skip
    full, base, whole = results["full"], results["baseline"], results["whole_fill"]

    def med(rows: list[RegionResult], key: str) -> float | None:
        return r(median([float(getattr(x, key)) for x in rows]), 4)

    strokes, base_strokes = med(full, "strokes"), med(base, "strokes")
    return {
        "strokes_median": strokes,
        "baseline_strokes_median": base_strokes,
        "accuracy_median": med(full, "accuracy"),
        "baseline_accuracy_median": med(base, "accuracy"),
        "clicks_median": med(full, "clicks"),
        "baseline_clicks_median": med(base, "clicks"),
        "seconds_median": med(full, "seconds"),
        "baseline_seconds_median": med(base, "seconds"),
        "whole_fill_strokes_median": med(whole, "strokes"),
        "whole_fill_accuracy_median": med(whole, "accuracy"),
        "whole_fill_clicks_median": med(whole, "clicks"),
        "baseline_over_full_strokes": r(base_strokes / strokes, 2)
        if strokes and base_strokes
        else None,
        "reached": sum(x.reached for x in full),
        "baseline_reached": sum(x.reached for x in base),
        "saved_accuracy_median": r(saved, 4),
        "regions": len(full),
        "regions_in_transfer": regions_sent,
        "target_accuracy": args.target,
        "targets": {
            "strokes_median_at_most_3": bool(strokes is not None and strokes <= 3),
            "baseline_at_least_3x": bool(strokes and base_strokes and base_strokes >= 3 * strokes),
        },
        "per_region": {mode: [x.row() for x in rows] for mode, rows in results.items()},
        "frames": args.frames,
        "seed": args.seed,
        "arch": arch,
        "transfer": {k: v for k, v in (sent.get("data") or {}).items() if not isinstance(v, list)},
    }


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    if args.tiny:
        args.frames, args.regions = min(args.frames, 8), 1
        args.max_strokes = min(args.max_strokes, 4)
    with tempfile.TemporaryDirectory(prefix="ars-bench-annotation-") as tmp:
        result = asyncio.run(_run(args, Path(tmp), settings.prefix))
    if args.pictures:
        from ars.bench.annotation_pictures import strips

        result["pictures"] = [str(p) for p in strips(args.pictures)]
    return result
