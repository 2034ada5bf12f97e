"""Robot agent parts on their own: mailbox, candidate store, sources, selection, CLI flags."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.config import RobotSettings, load_settings
from common.envelope import encode
from common.errors import ConfigError, ModelError
from common.images import encode_jpeg, encode_png
from robot_agent import cli
from robot_agent.candidates import Candidate, CandidateStore, HardestOf
from robot_agent.inference import class_mask
from robot_agent.mailbox import LatestMailbox
from robot_agent.model_store import ModelFiles
from robot_agent.sources import FolderSource, MqttSource, Pacer, SimSource, open_source
from robot_agent.transfer import full_frames_bytes, select
from tests.helpers.robot import noise, tiny_checkpoint, write_noise_frames


async def test_mailbox_keeps_only_the_newest() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    for i in range(5):
        box.put(i)
    assert box.waiting and box.dropped == 4 and box.put_count == 5
    assert await box.get() == 4
    assert not box.waiting
    getter = asyncio.create_task(box.get())
    await asyncio.sleep(0.01)
    assert not getter.done()  # nothing queued behind the one taken
    box.put(7)
    assert await asyncio.wait_for(getter, 1) == 7
    box.put(8)
    box.clear()
    assert not box.waiting


def cand(i: int, score: float, *, frame: tuple[int, int] = (160, 120)) -> Candidate:
    return Candidate(
        region_id=f"r{i:03d}",
        frame_id=f"f{i}",
        score=score,
        mean_entropy=0.5,
        region_entropy=0.6,
        box=(10, 20, frame[0] // 2, frame[1] // 2),
        frame_size=frame,
        model_version="base",
        ts=float(i),
        crop_bytes=1000 + i,
    )


def test_candidate_store_is_bounded_and_survives_reopen(tmp_path: Path) -> None:
    root = tmp_path / "cands"
    store = CandidateStore(root, max_candidates=10)
    crop, mask = encode_png(noise(6, 8, 0)), encode_png(np.zeros((6, 8), np.uint8))
    scores = [0.1 * ((i * 7) % 13) for i in range(25)]
    for i, score in enumerate(scores):
        store.add(cand(i, score), crop, mask)
        assert store.count <= 10
    assert store.count == 10 and store.evicted == 15
    kept = sorted(scores, reverse=True)[:10]
    assert [c.score for c in store.unsent()] == pytest.approx(kept)  # lowest scores evicted
    assert len(list((root / "crops").iterdir())) == 10
    top = store.unsent()[0]
    assert store.read_parts(top.region_id) == (crop, mask)
    store.mark_sent([top.region_id])
    assert store.unsent_count == 9
    store.close()

    # a crash between the file writes and the row, and a row whose file vanished
    (root / "crops" / "orphan.png").write_bytes(b"x")
    (root / "crops" / ".r999.png.123.tmp").write_bytes(b"x")
    reopened = CandidateStore(root, max_candidates=10)
    store_ids = [c.region_id for c in reopened.unsent()]
    lost, torn = store_ids[-1], store_ids[-2]
    (root / "masks" / f"{lost}.png").unlink()
    # files are not fsynced: a power cut can leave one short; its recorded size gives it away
    (root / "crops" / f"{torn}.png").write_bytes(crop[: len(crop) // 2])
    reopened.close()

    again = CandidateStore(root, max_candidates=10)
    assert again.count == 8 and again.unsent_count == 7
    assert again.get(top.region_id) is not None and again.get(top.region_id).sent  # type: ignore[union-attr]
    assert again.get(lost) is None and again.get(torn) is None
    assert sorted(p.name for p in (root / "crops").iterdir()) == sorted(
        f"{c}.png" for c in [top.region_id, *store_ids[:-2]]
    )
    # full again: sent candidates go before unsent ones, whatever their score
    for i in range(100, 103):
        again.add(cand(i, 0.0), crop, mask)
    assert again.get(top.region_id) is None and again.count == 10
    again.close()


def test_hardest_of_n_keeps_one_per_n_the_highest_score() -> None:
    pick: HardestOf[tuple[str, float]] = HardestOf(3, lambda item: item[1])
    frames = [("a", 0.2), ("b", 0.9), ("c", 0.5), ("d", 0.1), ("e", 0.1), ("f", 0.3), ("g", 1.0)]
    assert [pick.offer(f) for f in frames] == [
        None, None, ("b", 0.9), None, None, ("f", 0.3), None,
    ]  # fmt: skip
    pick.reset()  # segmentation stopped: "g" is forgotten, the next group starts afresh
    assert [pick.offer(f) for f in frames[:3]] == [None, None, ("b", 0.9)]
    every: HardestOf[tuple[str, float]] = HardestOf(1, lambda item: item[1])
    assert [every.offer(f) for f in frames[:2]] == frames[:2]
    with pytest.raises(ValueError):
        HardestOf(0, float)


def test_selection_and_full_frame_estimate_by_hand() -> None:
    cands = [
        cand(i, s) for i, s in enumerate([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0, 0.05])
    ]
    chosen = select(cands, 0.2)
    assert [c.score for c in chosen] == [0.9, 0.8, 0.7]  # ceil(0.2 * 11) = 3
    assert len(select(cands[:10], 0.2)) == 2  # exactly 2, no float rounding up to 3
    # 160x120 frame, 80x60 crop: area ratio 4; crops of 1000+i bytes
    assert full_frames_bytes(cands[:3]) == 4 * (1000 + 1001 + 1002)
    other = cand(0, 1.0, frame=(200, 100))
    assert other.area_ratio == 4.0


async def test_folder_source_sorted_looping_and_paced(tmp_path: Path) -> None:
    write_noise_frames(tmp_path / "cam", 3, 32, 24)
    (tmp_path / "cam" / "notes.txt").write_text("not an image")
    source = FolderSource(tmp_path / "cam", fps=50.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    got = []
    async for frame_id, image in source:
        got.append((frame_id, image))
        if len(got) == 5:
            break
    assert loop.time() - start >= 4 / 50.0 - 0.01
    assert [f for f, _ in got] == [
        "folder-frame000-i0",
        "folder-frame001-i1",
        "folder-frame002-i2",
        "folder-frame000-i3",
        "folder-frame001-i4",
    ]
    assert np.array_equal(got[0][1], got[3][1]) and got[0][1].shape == (24, 32, 3)
    with pytest.raises(ConfigError, match="no images"):
        FolderSource(tmp_path, fps=5)


async def test_sim_source_frames_follow_the_simulator_ids() -> None:
    settings = RobotSettings(width=64, height=48, camera_fps=100, seed=3, switch_at=5)
    source = open_source("sim:drive", settings)
    assert isinstance(source, SimSource)
    frames = []
    async for frame in source:
        frames.append(frame)
        if len(frames) == 2:
            break
    assert [f for f, _ in frames] == ["drive-s3-w64x48-k5-i0", "drive-s3-w64x48-k5-i1"]
    assert frames[0][1].shape == (48, 64, 3) and frames[0][1].dtype == np.uint8


async def test_mqtt_source_decodes_jpeg_and_envelopes_and_reports_garbage() -> None:
    errors: list[str] = []

    async def on_error(msg: str) -> None:
        errors.append(msg)

    source = open_source("mqtt:ars/robots/rover1/camera", RobotSettings(), on_error)
    assert isinstance(source, MqttSource) and source.topic == "ars/robots/rover1/camera"
    frames = aiter(source)
    source.feed(encode_jpeg(noise(24, 32, 1)))
    frame_id, image = await anext(frames)
    assert frame_id == "mqtt-i0" and image.shape == (24, 32, 3)
    source.feed(b"garbage")
    source.feed(encode({"frame_id": "cam-7"}, [encode_png(noise(10, 12, 2))]))  # replaces it
    frame_id, image = await anext(frames)
    assert frame_id == "cam-7" and image.shape == (10, 12, 3)
    source.feed(b"garbage")
    pending = asyncio.ensure_future(anext(frames))
    for _ in range(200):  # decoding runs in a worker thread: allow a loaded machine
        if errors:
            break
        await asyncio.sleep(0.05)
    assert errors and "bad camera frame" in errors[0]
    pending.cancel()
    with pytest.raises(ConfigError):
        MqttSource("ars/robots/+/camera")


async def test_pacer_does_not_burst_after_a_stall() -> None:
    pacer = Pacer(100.0)
    loop = asyncio.get_running_loop()
    await pacer.wait()
    await asyncio.sleep(0.1)  # the consumer stalls for 10 periods
    start = loop.time()
    for _ in range(3):
        await pacer.wait()
    assert loop.time() - start >= 0.015  # paced again, not three instant catch-up ticks


def test_model_files_fall_back_to_previous_then_configured(tmp_path: Path) -> None:
    base = tiny_checkpoint(tmp_path / "base.pt", "base", seed=0)
    files = ModelFiles(tmp_path / "models")
    assert files.load_last_good(base, "cpu").version == "base"
    tiny_checkpoint(files.previous, "prev", seed=1)
    assert files.load_last_good(base, "cpu").version == "prev"
    tiny_checkpoint(files.current, "cur", seed=2)
    assert files.load_last_good(base, "cpu").version == "cur"
    files.pointer.write_text('{"current": {"version": "cur", "sha256": "' + "0" * 64 + '"}}')
    assert files.load_last_good(base, "cpu").version == "prev"  # sha differs from the pointer
    files.previous.write_bytes(b"torn")
    assert files.load_last_good(base, "cpu").version == "base"
    with pytest.raises(ModelError, match="no usable model"):
        files.load_last_good(tmp_path / "missing.pt", "cpu")


def test_cli_flags_map_into_robot_settings() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        ["--id", "rover2", "--source", "sim:rural", "--infer-size", "160x120", "--preview-fps", "2"]
    )
    settings = load_settings(overrides=cli.overrides(args))
    robot = settings.robot
    assert (robot.id, robot.source, robot.preview_fps) == ("rover2", "sim:rural", 2.0)
    assert (robot.infer_width, robot.infer_height) == (160, 120)
    with pytest.raises(SystemExit):
        parser.parse_args(["--infer-size", "160"])
    assert cli.overrides(parser.parse_args([])) == {}


def test_box_mask_matches_the_full_frame_upsampling() -> None:
    torch.manual_seed(0)
    low = torch.randn(19, 8, 10)
    full = F.interpolate(low[None], size=(120, 160), mode="bilinear", align_corners=False)
    expected = full[0].argmax(0).numpy().astype(np.uint8)
    for box in [(0, 0, 160, 120), (40, 30, 80, 60), (80, 60, 80, 60), (0, 60, 80, 60)]:
        x, y, w, h = box
        got = class_mask(low, (120, 160), box)
        assert got.shape == (h, w) and got.dtype == np.uint8
        assert (got == expected[y : y + h, x : x + w]).mean() > 0.999


def test_install_steps_take_turns_with_frames_and_do_not_wait_when_idle(tmp_path: Path) -> None:
    import itertools
    import threading
    import time

    from models.checkpoint import load_checkpoint
    from robot_agent.inference import LoadedModel, ModelSlot

    model, meta = load_checkpoint(tiny_checkpoint(tmp_path / "m.pt", "v1"))
    slot = ModelSlot(LoadedModel(model=model, meta=meta, sha256="0" * 64))
    # idle (no frame for a while): a step runs at once, twice in a row
    t0 = time.monotonic()
    assert slot.run_between_frames(lambda: 1) == 1 and slot.run_between_frames(lambda: 2) == 2
    assert time.monotonic() - t0 < 0.1
    log: list[str] = []
    stop = threading.Event()

    def frames() -> None:
        while not stop.is_set():
            with slot.forward_pass():
                log.append("frame")
                time.sleep(0.01)
            time.sleep(0.002)  # mining, handing on: the step may take the turn now

    slot.frames_flowing = True
    worker = threading.Thread(target=frames)
    worker.start()
    try:
        time.sleep(0.05)
        for i in range(5):
            slot.run_between_frames(log.append, f"step{i}")
    finally:
        stop.set()
        worker.join()
    steps = [i for i, entry in enumerate(log) if entry.startswith("step")]
    assert len(steps) == 5
    # while frames flow, at least one frame passes between two steps: no frame waits for two
    assert all(b - a >= 2 for a, b in itertools.pairwise(steps))


def test_spread_window_worker_moves_each_frames_window_over_the_grid(tmp_path: Path) -> None:
    from models.checkpoint import load_checkpoint
    from robot_agent.inference import InferenceWorker, LoadedModel, ModelSlot

    model, meta = load_checkpoint(tiny_checkpoint(tmp_path / "m.pt", "v1"))
    slot = ModelSlot(LoadedModel(model=model, meta=meta, sha256="0" * 64))
    image = noise(120, 160, seed=3)
    kwargs = {"infer_size": (64, 48), "region_frac": 0.5}
    hardest = InferenceWorker(slot, **kwargs)  # type: ignore[arg-type]
    spread = InferenceWorker(slot, window="spread", **kwargs)  # type: ignore[arg-type]
    same = {hardest.process(f"f{i}", image).mining.box for i in range(9)}
    boxes = [spread.process(f"f{i}", image).mining.box for i in range(9)]
    assert len(same) == 1  # one image, one hardest window
    assert len(set(boxes)) == 9  # the same image: each of the 3x3 grid windows once
    for x, y, w, h in boxes:
        assert (w, h) == (80, 60) and 0 <= x <= 80 and 0 <= y <= 60
    with pytest.raises(ValueError, match="window rule"):
        InferenceWorker(slot, window="newest", **kwargs)  # type: ignore[arg-type]
