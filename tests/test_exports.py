"""``ars export``: the labeled regions as a Cityscapes-style data set (reloaded and compared
with the store) and a model as ONNX (run with onnxruntime against torch) or a state dict."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from ars.cli import main
from common.classes import colorize
from common.hashing import sha256_file
from common.images import encode_png
from common.schemas import RegionHeader, new_id
from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from server_agent.store import Store, VersionRow
from tests.helpers.robot import tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def add_region(store: Store, rid: str, seed: int, *, label: bool | None) -> str:
    """A region with a random crop; ``label``: labeled (True), skipped (False), untouched."""
    rng = np.random.default_rng(seed)
    w, h = 24 + seed, 16 + seed
    header = RegionHeader(
        robot_id=rid,
        transfer_id="t1",
        region_id=new_id(),
        frame_id=f"bag-{1_700_000_000_000_000_000 + seed}",
        score=float(seed),
        mean_entropy=0.2,
        region_entropy=0.3,
        box=(seed, 2 * seed, w, h),
        frame_size=(320, 240),
        model_version=f"base-{rid}",
    )
    crop = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pred = rng.integers(0, 19, (h, w), dtype=np.uint8)
    assert store.add_region(header, encode_png(crop), encode_png(pred))
    row = store.get_region(header.region_id)
    assert row is not None
    if label is True:
        mask = rng.integers(0, 19, (h, w), dtype=np.uint8)
        mask[: h // 3] = 255  # unlabeled band
        store.save_annotation(row, encode_png(mask), labeled_pixels=int((mask != 255).sum()))
    elif label is False:
        store.save_annotation(row, None)
    return header.region_id


def register(store: Store, version: str, ckpt: Path) -> None:
    target = store.model_path(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(ckpt.read_bytes())
    store.add_version(
        VersionRow(
            version=version,
            robot_id="rover1",
            created=time.time(),
            sha256=sha256_file(target),
            bytes=target.stat().st_size,
            arch="tiny",
            dtype="fp32",
        )
    )


def png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_dataset_export_reloads_equal_to_the_store(tmp_path: Path) -> None:
    data = tmp_path / "server"
    store = Store(data)
    first = [add_region(store, "rover1", s, label=True) for s in (1, 2)]
    add_region(store, "rover1", 3, label=False)  # skipped: not exported
    add_region(store, "rover1", 4, label=None)  # not labeled: not exported
    other = add_region(store, "rover2", 5, label=True)
    time.sleep(0.01)
    register(store, "v1", tiny_checkpoint(tmp_path / "v1.pt", "v1"))
    time.sleep(0.01)
    later = add_region(store, "rover1", 6, label=True)
    store.close()

    out = tmp_path / "export"
    # the real command line, as a user types it (``ars up``'s data folder holds server/)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ars.cli",
            "export",
            "dataset",
            str(out),
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"dataset -> {out}: 4 labeled regions (rover1, rover2)" in done.stdout

    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "ars-cityscapes-1" and index["ignore"] == 255
    assert index["classes"][0] == "road" and len(index["classes"]) == 19
    assert index["palette"][0] == [128, 64, 128] and index["palette"][18] == [119, 11, 32]
    assert index["skipped"] == []
    entries = {e["region_id"]: e for e in index["regions"]}
    assert set(entries) == {*first, other, later}

    store = Store(data)
    times = store.annotation_times()
    for region_id, entry in entries.items():
        row = store.get_region(region_id)
        assert row is not None
        crop_png, _, label_png = store.read_region(row)
        image = png(out / entry["image"])
        label = png(out / entry["label"])
        assert entry["image"] == f"leftImg8bit/train/{row.robot_id}/{region_id}_leftImg8bit.png"
        assert entry["label"].endswith(f"{region_id}_gtFine_labelTrainIds.png")
        np.testing.assert_array_equal(image, np.asarray(Image.open(io.BytesIO(crop_png))))
        np.testing.assert_array_equal(label, np.asarray(Image.open(io.BytesIO(label_png))))
        assert label.dtype == np.uint8 and label.ndim == 2
        assert set(np.unique(label)) <= {*range(19), 255} and (label == 255).any()
        np.testing.assert_array_equal(png(out / entry["color"]), colorize(label))
        assert entry["robot_id"] == row.robot_id and entry["frame_id"] == row.frame_id
        assert tuple(entry["box"]) == row.box and tuple(entry["frame_size"]) == row.frame_size
        assert entry["model_version"] == f"base-{row.robot_id}"
        assert entry["annotated_at"] == times[region_id][0]
        assert entry["labeled_pixels"] == int((label != 255).sum())
    store.close()

    # one robot; only labels newer than model v1
    assert (
        main(
            [
                "export",
                "--data-dir",
                str(data),
                "dataset",
                str(tmp_path / "r2"),
                "--robot",
                "rover2",
            ]
        )
        == 0
    )
    r2 = json.loads((tmp_path / "r2" / "index.json").read_text())
    assert [e["region_id"] for e in r2["regions"]] == [other] and r2["robot"] == "rover2"
    assert (
        main(["export", "dataset", str(tmp_path / "new"), "--since", "v1", "--data-dir", str(data)])
        == 0
    )
    new = json.loads((tmp_path / "new" / "index.json").read_text())
    assert [e["region_id"] for e in new["regions"]] == [later] and new["since"] == "v1"


def test_dataset_export_errors_and_a_damaged_region(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "dataset", str(tmp_path / "x"), "--data-dir", str(tmp_path)]) == 2
    assert "no server store in" in capsys.readouterr().err
    store = Store(tmp_path / "s")
    good = add_region(store, "rover1", 1, label=True)
    bad = add_region(store, "rover1", 2, label=True)
    row = store.get_region(bad)
    assert row is not None
    (store.region_dir("rover1", bad) / "annotation.png").write_bytes(
        encode_png(np.full((3, 3), 7, np.uint8))
    )
    store.close()
    args = ["export", "--data-dir", str(tmp_path / "s"), "dataset", str(tmp_path / "out")]
    assert main([*args, "--since", "nope"]) == 2
    assert "--since 'nope': no such model version" in capsys.readouterr().err
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 labeled regions (rover1)" in out and "1 left out" in out
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [e["region_id"] for e in index["regions"]] == [good]
    assert index["skipped"][0]["region_id"] == bad
    assert "differs from the region" in index["skipped"][0]["reason"]


def test_model_export_onnx_matches_torch_with_dynamic_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "server"
    store = Store(data)
    register(store, "v7", tiny_checkpoint(tmp_path / "v7.pt", "v7", seed=3))
    store.close()
    out = tmp_path / "v7.onnx"
    assert (
        main(["export", "--data-dir", str(data), "model", "v7", "--format", "onnx", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "model v7 (tiny, 19 classes)" in printed and "ONNX opset" in printed

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]
    model, _ = load_checkpoint(tmp_path / "v7.pt")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    for h, w in [(240, 320), (120, 200), (97, 131)]:
        x = torch.randn(1, 3, h, w, generator=gen)
        (got,) = session.run(["logits"], {"image": x.numpy()})
        with torch.inference_mode():
            want = model(x).numpy()
        assert got.shape == (1, 19, h, w)
        assert float(np.abs(got - want).max()) <= 1e-3

    assert main(["export", "--data-dir", str(data), "model", "v9", str(tmp_path / "x.onnx")]) == 2
    assert "model 'v9' is not registered; newest: v7" in capsys.readouterr().err


def test_model_export_pt_is_a_torchvision_state_dict(tmp_path: Path) -> None:
    """The base checkpoint (LR-ASPP MobileNetV3-Large) loads into torchvision's own model
    unchanged and gives the same logits."""
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    out = tmp_path / "base_state.pt"
    assert (
        main(["export", "--data-dir", str(tmp_path), "model", "base", "--format", "pt", str(out)])
        == 0
    )
    state = torch.load(out, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    ours, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    theirs = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=19)
    theirs.load_state_dict(state, strict=True)
    theirs.eval()
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(theirs(x)["out"], ours(x))
