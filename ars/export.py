"""``ars export dataset DIR`` and ``ars export model VERSION OUT``: the server's labels and
models in standard formats, to train and run elsewhere. Both read the server's data folder
(``--data-dir``: the server's own, or the folder ``ars up`` used, whose ``server/`` it finds).

- ``dataset DIR [--robot R] [--since VERSION]``: every labeled region as a Cityscapes-style
  pair plus ``index.json`` (``server_agent.dataset_export``); ``--since``: only labels saved
  after model VERSION was made (the ones it has not learned from).
- ``model VERSION --format onnx|pt OUT``: VERSION is a version the server registered, ``base``
  (the base checkpoint) or a checkpoint file. ``onnx``: input ``image`` 1x3xHxW (RGB / 255,
  normalised with the ImageNet mean and std), output ``logits`` 1x19xHxW, H and W dynamic;
  the file is checked with onnxruntime against torch before the command says done. ``pt``:
  the fp32 weights as a plain state dict (``torch.load(OUT, weights_only=True)``), whose keys
  are torchvision's: ``lraspp_mobilenet_v3_large(num_classes=19).load_state_dict`` takes the
  ``lraspp_mbv3_large`` one unchanged.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch

from common.config import Settings
from common.errors import ConfigError, ModelError
from common.files import write_atomic
from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from models.network import SegNet
from server_agent.store import Store

ONNX_TOLERANCE = 1e-3  # max abs logit difference onnxruntime vs torch that an export may show


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT", required=True)
    data = sub.add_parser("dataset", help="labeled regions as Cityscapes-style pairs + index.json")
    data.add_argument("folder", type=Path, metavar="DIR", help="where to write the data set")
    data.add_argument("--robot", help="only this robot's regions")
    data.add_argument("--since", metavar="VERSION", help="only labels saved after VERSION was made")
    model = sub.add_parser("model", help="a model version as ONNX or a torchvision state dict")
    model.add_argument("version", metavar="VERSION", help="registered version, base, or a .pt file")
    model.add_argument(
        "--format",
        choices=["onnx", "pt"],
        default="onnx",
        dest="fmt",
        help="onnx: dynamic height and width (default); pt: a torchvision state dict",
    )
    model.add_argument("out", type=Path, metavar="OUT", help="the file to write")
    for p in (data, model):  # also accepted after the sub-command
        p.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="server data")
        p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML config file")


def server_folder(data_dir: Path) -> Path | None:
    """The server's data folder: ``data_dir`` itself or its ``server/`` (``ars up``)."""
    for folder in (data_dir, data_dir / "server"):
        if (folder / "server.sqlite3").is_file():
            return folder
    return None


def open_store(settings: Settings) -> Store:
    folder = server_folder(settings.data_dir)
    if folder is None:
        raise ConfigError(
            f"no server store in {settings.data_dir} or {settings.data_dir / 'server'}; "
            "pass the server's --data-dir (e.g. .ars/server)"
        )
    return Store(folder)


def resolve_checkpoint(version: str, settings: Settings) -> Path:
    """VERSION -> the checkpoint file it names."""
    path = Path(version).expanduser()
    if path.suffix == ".pt" and path.is_file():
        return path
    if version == "base":
        return settings.server.base_model or DEFAULT_CHECKPOINT
    folder = server_folder(settings.data_dir)
    if folder is None:
        raise ConfigError(f"model {version!r}: not a .pt file, and no server store to look in")
    store = Store(folder)
    try:
        row = store.version(version)
        known = [v.version for v in store.versions()[:10]]
        if row is None:
            raise ConfigError(
                f"model {version!r} is not registered; newest: {', '.join(known) or 'none'} "
                "(or base, or a .pt file)"
            )
        found = store.model_path(version)
    finally:
        store.close()
    if not found.is_file():
        raise ModelError(f"model {version}: its file {found} is missing")
    return found


def check_onnx(model: SegNet, out: Path, height: int, width: int) -> float:
    """Run ``out`` with onnxruntime on a random frame (at a size other than the traced one)
    and return the max abs difference of its logits from torch's; ModelError above 1e-3."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, height + 8, width - 8, generator=torch.Generator().manual_seed(0))
    got = session.run(["logits"], {"image": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    diff = float(np.abs(got - want).max())
    if got.shape != want.shape or diff > ONNX_TOLERANCE:
        raise ModelError(f"ONNX check failed: shape {got.shape}, max abs diff {diff:.2e}")
    return diff


def export_model(version: str, fmt: str, out: Path, settings: Settings) -> str:
    """Write the model; returns a one-line report."""
    source = resolve_checkpoint(version, settings)
    model, meta = load_checkpoint(source)
    if fmt == "pt":
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
        write_atomic(out, buf.getvalue())
        return (
            f"model {meta.version} ({meta.arch}, {len(meta.classes)} classes) -> {out}: "
            f"state dict, {len(model.state_dict())} tensors, {out.stat().st_size / 1e6:.1f} MB"
        )
    import onnx

    from models.onnx_export import export_onnx

    h, w = settings.robot.infer_height, settings.robot.infer_width
    export_onnx(model, out, height=h, width=w)
    opset = next(o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx"))
    diff = check_onnx(model, out, h, w)
    return (
        f"model {meta.version} ({meta.arch}, {len(meta.classes)} classes) -> {out}: ONNX opset "
        f"{opset}, input image 1x3xHxW, output logits 1x{len(meta.classes)}xHxW, "
        f"{out.stat().st_size / 1e6:.1f} MB; onnxruntime vs torch max abs diff {diff:.1e}"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.what == "model":
        print(export_model(args.version, args.fmt, args.out, settings), flush=True)
        return 0
    from server_agent.dataset_export import export_dataset

    store = open_store(settings)
    try:
        summary = export_dataset(store, args.folder, robot_id=args.robot, since=args.since)
    finally:
        store.close()
    robots = sorted({r["robot_id"] for r in summary.regions})
    print(
        f"dataset -> {args.folder}: {len(summary.regions)} labeled regions "
        f"({', '.join(robots) or 'none'}), index {args.folder / 'index.json'}"
        + (f", {len(summary.skipped)} left out (see index.json)" if summary.skipped else ""),
        flush=True,
    )
    if summary.skipped:
        print(json.dumps(summary.skipped, indent=1), flush=True)
    return 0
