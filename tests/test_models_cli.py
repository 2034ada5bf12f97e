"""`ars pretrain` and `ars eval` end to end on the tiny net (few steps, small frames)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ars.commands import evaluate as evaluate_cli
from ars.commands import pretrain as pretrain_cli
from ars.commands.cli_util import parse_hw
from models.checkpoint import load_checkpoint


def _parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def test_pretrain_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.pt"
    argv = ["--arch", "tiny", "--steps", "3", "--batch-size", "2", "--pool", "3"]
    argv += ["--size", "60x80", "--eval-frames", "2", "--out", str(out), "--fp16"]
    assert pretrain_cli.run(_parse(pretrain_cli, argv)) == 0
    report = json.loads(capsys.readouterr().out)
    _, meta = load_checkpoint(out, expected_arch="tiny")
    assert meta.dtype == "fp16" and report["sha256"] == meta.weights_sha256
    assert set(meta.metrics) >= {"urban_miou", "rural_miou", "train_seconds"}
    assert 0.0 <= meta.metrics["urban_miou"] <= 1.0

    args = _parse(evaluate_cli, [str(out), "--frames", "2", "--size", "60x80"])
    assert evaluate_cli.run(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arch"] == "tiny" and result["frames_per_domain"] == 2
    assert 0.0 <= result["rural_miou"] <= 1.0


def test_eval_reports_a_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert evaluate_cli.run(_parse(evaluate_cli, [str(bad)])) == 2
    assert "cannot read" in json.loads(capsys.readouterr().out)["error"]


def test_parse_hw() -> None:
    assert parse_hw("240x320") == (240, 320)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_hw("320")
