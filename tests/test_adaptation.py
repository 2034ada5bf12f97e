"""Adaptation: the iteration rule, BN re-estimation, pseudo-labels, scores and the round loop."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ars.bench import adaptation
from common.config import Settings
from common.samples import LabeledSample
from models.adaptation import (
    IterationRule,
    blend_into,
    bound_forgetting,
    labeled_frames,
    pseudo_labels,
    reestimate_batchnorm,
    snapshot,
)
from models.checkpoint import save_checkpoint
from models.metrics import scores
from models.network import build_model
from models.training import finetune


def test_iterations_grow_with_labeled_pixels_between_floor_and_cap() -> None:
    rule = IterationRule(per_frame=3.0, floor=100, cap=300)
    assert rule(0) == 100 and rule(5) == 100  # a few regions: the floor
    assert rule(50) == 150 and rule(50.1) == 151  # in between: 3 per labeled frame
    assert rule(100) == 300 and rule(1000) == 300  # whole drives: the cap
    quarter = np.full((8, 8), 255, np.uint8)
    quarter[:4, :4] = 1
    samples = [LabeledSample(np.zeros((8, 8, 3), np.uint8), quarter)] * 4
    assert labeled_frames(samples) == pytest.approx(1.0)  # four quarters: one frame


def test_batchnorm_statistics_are_the_mix_of_new_and_old_frames() -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    rng = np.random.default_rng(0)
    dark = [rng.integers(0, 60, (48, 64, 3), dtype=np.uint8) for _ in range(6)]
    bright = [rng.integers(180, 255, (48, 64, 3), dtype=np.uint8) for _ in range(6)]
    reestimate_batchnorm(model, dark, bright, (48, 64), batch_size=12)  # one batch: exact
    x = torch.cat(seen)
    assert x.shape[0] == 12  # both domains in the one batch
    assert torch.allclose(bn.running_mean, x.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, x.var((0, 2, 3), unbiased=True), atol=1e-4)
    assert not model.training and bn.momentum == 0.1  # mode and momentum restored
    after = {k: v for k, v in model.state_dict().items() if "running" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before if "num_batches" not in k)


def test_pseudo_labels_keep_only_confident_pixels() -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    images = [
        np.random.default_rng(i).integers(0, 255, (60, 80, 3), dtype=np.uint8) for i in range(3)
    ]
    everything = pseudo_labels(model, images, (30, 40), threshold=0.0)
    nothing = pseudo_labels(model, images, (30, 40), threshold=0.999)
    assert [s.label.shape for s in everything] == [(30, 40)] * 3
    assert [s.image.shape for s in everything] == [(30, 40, 3)] * 3
    assert all((s.label < 19).all() for s in everything)  # every pixel: the argmax
    assert all((s.label == 255).all() for s in nothing)  # a fresh net is never that sure
    # a label-free fine-tune trains on pseudo-labels alone
    weights = copy.deepcopy(model.state_dict())
    finetune(
        model, [], [], iterations=2, lr=0.01, frozen_blocks=0, size=(30, 40), pseudo=everything
    )
    assert any(not torch.equal(weights[k], v) for k, v in model.state_dict().items())


def _two_models() -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A tiny net and two different states of it (the robot's model and a fine-tune's)."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    before = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model, before, snapshot(model)


def test_blend_is_the_straight_line_between_the_two_models() -> None:
    model, before, after = _two_models()
    blend_into(model, before, after, 0.25)
    now = model.state_dict()
    for k, v in after.items():
        if v.is_floating_point():
            assert torch.allclose(now[k], before[k] + 0.25 * (v - before[k]))
        else:
            assert torch.equal(now[k], v)  # batch counters are not blended


def test_forgetting_guard_keeps_a_fine_tune_within_budget_and_no_more_blended_than_needed() -> None:
    model, before, after = _two_models()
    weight = "classifier.low_classifier.weight"
    start, moved = before[weight], after[weight]

    def old_miou(m: nn.Module) -> float:
        """A stand-in old-domain score that falls along the line from `before` to `after`:
        0.70 at the robot's model, 0.66 at the fine-tune (the guard only sees numbers)."""
        share = float((m.state_dict()[weight] - start).mean() / (moved - start).mean())
        return 0.70 - 0.04 * share

    within = bound_forgetting(model, before, old_miou, anchor=0.70, budget=0.05)
    assert within.blend == 1.0 and within.tried == 1  # within budget: untouched
    assert torch.equal(model.state_dict()[weight], moved)
    halfway = bound_forgetting(model, before, old_miou, anchor=0.70, budget=0.02)
    assert halfway.blend == 0.5 and halfway.old_miou == pytest.approx(0.68)  # 0.75 lost 0.03
    assert torch.allclose(model.state_dict()[weight], (start + moved) / 2)
    model.load_state_dict(after)
    spent = bound_forgetting(model, before, old_miou, anchor=0.75, budget=0.01)
    assert spent.blend == 0.0 and torch.equal(model.state_dict()[weight], start)  # nothing fits


def test_scores_count_only_classes_in_the_ground_truth() -> None:
    conf = np.zeros((19, 19), dtype=np.int64)
    conf[0, 0], conf[0, 5] = 8, 2  # road: 8 right, 2 called pole (pole absent from the truth)
    conf[13, 13] = 10  # car: all right
    out = scores(conf)
    assert out["iou"] == {"0": 0.8, "13": 1.0}  # pole is not scored, but cost road its IoU
    assert out["miou"] == pytest.approx(0.9) and out["pixel_acc"] == pytest.approx(0.9)
    assert out["miou_large"] == pytest.approx(0.8) and out["miou_small"] == pytest.approx(1.0)
    assert out["confused"] == [[0, 5, 0.1]]  # road called pole: 2 of the 20 pixels


def test_confused_pairs_are_the_largest_mistakes_first() -> None:
    from models.metrics import confused_pairs

    conf = np.zeros((19, 19), dtype=np.int64)
    conf[0, 0], conf[9, 9], conf[10, 10] = 9000, 500, 400
    conf[9, 0], conf[10, 2], conf[8, 9], conf[0, 1] = 60, 30, 9, 1  # of 10,000 pixels
    assert confused_pairs(conf) == [[9, 0, 0.006], [10, 2, 0.003]]  # under 0.1 %: left out
    assert confused_pairs(conf, top=1) == [[9, 0, 0.006]]
    assert confused_pairs(np.zeros((19, 19), dtype=np.int64)) == []


def _tiny_bench(tmp_path: Path) -> tuple[Path, Settings, argparse.ArgumentParser]:
    """A tiny checkpoint, small frames and the bench's own argument parser."""
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, build_model("tiny"), arch="tiny", version="tiny-test")
    settings = Settings(
        robot={"width": 160, "height": 120, "infer_width": 80, "infer_height": 60},
        server={"train_width": 80, "train_height": 60},
    )
    parser = argparse.ArgumentParser()
    adaptation.add_arguments(parser)
    return ckpt, settings, parser


def test_round_loop_on_a_tiny_model(tmp_path: Path) -> None:
    ckpt, settings, parser = _tiny_bench(tmp_path)
    args = parser.parse_args(
        ["--round-frames", "10", "--stride", "3", "--eval-frames", "3", "--rounds", "2",
         "--rows", "all", "--checkpoint", str(ckpt), "--threads", "1", "--replay-frames", "4",
         "--iter-floor", "2", "--iter-per-frame", "1", "--iter-cap", "6", "--bn-frames", "8",
         "--pseudo-threshold", "0.05", "--plot", str(tmp_path / "chart.png"), "--seed", "5"]
    )  # fmt: skip
    assert "oracle" not in parser.parse_args([]).rows  # the ceiling reads the truth: opt-in
    out = adaptation.run(args, settings)
    json.dumps(out)
    rows = out["rows"]
    assert set(rows) == {"label_free", "ars", "random", "default", "full", "oracle"}
    assert out["budget_pixels"] == 0.05
    for name, rounds in rows.items():
        assert len(rounds) == 2
        for r, info in enumerate(rounds, start=1):
            assert set(info) >= {"next", "other", "urban", "iterations", "labeled_frames"}
            # every fine-tune passed the forgetting guard: the share of its change it kept
            assert info["blend"] in (1.0, 0.75, 0.5, 0.25, 0.0)
            assert 0.0 <= info["guard_urban"] <= 1.0
            for key in ("next", "other", "urban"):
                assert 0.0 <= info[key]["miou"] <= 1.0 and 0.0 <= info[key]["pixel_acc"] <= 1.0
            if name == "full":  # every driven frame labeled: 10 a round
                assert info["labeled_frames"] == pytest.approx(10 * r)
                assert info["iterations"] == 6  # capped
            elif name == "label_free":
                assert info["labeled_frames"] == 0 and info["pseudo_frames"] == 10 * r
                assert info["iterations"] == 2  # the floor, on pseudo-labels alone
            else:  # 2 frames a round (20 %), a quarter of each: 5 % of the pixels
                assert info["labeled_frames"] == pytest.approx(0.5 * r, abs=0.02)
                assert info["iterations"] == 2
    assert out["route"]["looks_per_round"] and out["route"]["next_frames"][0] == 2 * 10 * 3
    for key in ("gain_share_round1", "gain_share_round2", "miou_ratio_round1",
                "default_minus_random", "urban_drop_max", "next_pixel_acc_last"):  # fmt: skip
        assert key in out
    for rule in ("default", "oracle"):  # the margin over random frames, round by round
        margins = [
            rows[rule][r]["next"]["miou"] - rows["random"][r]["next"]["miou"] for r in range(2)
        ]
        assert out[f"{rule}_minus_random_rounds"] == [round(m, 4) for m in margins]
        assert out[f"{rule}_minus_random"] == round(sum(margins) / 2, 4)
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args.seed = 2000  # its urban evaluation frames would include the guard's
    with pytest.raises(SystemExit, match="forgetting guard"):
        adaptation.run(args, settings)
    args.seed, args.cast = 2, 3.5  # a gain below 0 would flip a channel
    with pytest.raises(SystemExit, match=r"strength is 0\.\.3"):
        adaptation.run(args, settings)


def test_rows_in_worker_processes_give_the_same_figures(tmp_path: Path) -> None:
    """Rows share only the plan: two worker processes reproduce one process bit for bit."""
    ckpt, settings, parser = _tiny_bench(tmp_path)
    common = ["--round-frames", "10", "--stride", "3", "--eval-frames", "3", "--rounds", "2",
              "--rows", "base,default,random,full", "--checkpoint", str(ckpt), "--threads", "1",
              "--replay-frames", "4", "--iter-floor", "2", "--iter-per-frame", "1",
              "--iter-cap", "4", "--plot", str(tmp_path / "chart.png"), "--seed", "7"]  # fmt: skip
    one = adaptation.run(parser.parse_args([*common, "--jobs", "1"]), settings)
    two = adaptation.run(parser.parse_args([*common, "--jobs", "2"]), settings)
    assert (one["jobs"], two["jobs"]) == (1, 2)
    strip = ("seconds", "cpu_seconds")
    for name in ("default", "random", "full"):
        for a, b in zip(one["rows"][name], two["rows"][name], strict=True):
            assert {k: v for k, v in a.items() if k not in strip} == {
                k: v for k, v in b.items() if k not in strip
            }, name
    assert one["base"] == two["base"]


def test_frames_rendered_once_are_the_frames_each_row_rendered(tmp_path: Path) -> None:
    """The run renders the rounds' frames and the evaluation sets once, for every row's
    worker: what a row reads back is, array for array, what it would have rendered."""
    ckpt, settings, parser = _tiny_bench(tmp_path)
    args = parser.parse_args([])  # the default recipe
    plan = adaptation.Plan(
        seed=3, rounds=2, per_round=4, stride=3, n_eval=3,
        recipe=adaptation._recipe(args, settings), device="cpu", checkpoint=str(ckpt),
        threads=1, settings=settings,
    )  # fmt: skip
    with adaptation.rendered_once(plan) as (rendered, cpu_seconds):
        assert rendered.store is not None and cpu_seconds > 0
        for r in range(plan.rounds):
            for a, b in zip(rendered.round_frames(r), plan.round_frames(r), strict=True):
                assert (a.frame_id, a.domain) == (b.frame_id, b.domain)
                assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
        fresh = plan.sets()
        for name, samples in rendered.sets().items():
            for got, want in zip(samples, fresh[name], strict=True):
                assert np.array_equal(got.image, want.image)
                assert np.array_equal(got.label, want.label)
    assert not Path(rendered.store).exists()  # scratch: gone with the run


def test_runs_of_one_plan_merge_into_the_run_of_all_their_rows(tmp_path: Path) -> None:
    """Rows share only the plan: the rows of two runs merge into the figures of one run."""
    ckpt, settings, parser = _tiny_bench(tmp_path)
    common = ["--round-frames", "8", "--stride", "3", "--eval-frames", "3", "--rounds", "2",
              "--checkpoint", str(ckpt), "--threads", "1", "--jobs", "1", "--replay-frames", "4",
              "--iter-floor", "2", "--iter-per-frame", "1", "--iter-cap", "3",
              "--plot", str(tmp_path / "chart.png"), "--seed", "9"]  # fmt: skip
    whole = adaptation.run(parser.parse_args([*common, "--rows", "base,default,full"]), settings)
    paths = []
    for rows in ("base,default", "base,full"):
        part = adaptation.run(parser.parse_args([*common, "--rows", rows]), settings)
        paths.append(tmp_path / f"{rows}.json")
        paths[-1].write_text(json.dumps(part))
    chart = tmp_path / "merged.png"
    merged = adaptation.run(
        parser.parse_args(["--merge", *map(str, paths), "--plot", str(chart)]), settings
    )
    assert merged["merged"] == 2 and set(merged["rows"]) == {"default", "full"}
    # each row says which torch build and processor kernels made it (figures depend on them)
    assert whole["machine"]["torch"] == torch.__version__
    assert whole["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert merged["machine_by_row"] == {"default": whole["machine"], "full": whole["machine"]}
    for key in ("miou_ratio_round1", "gain_share_round2", "urban_drop_max"):
        assert merged[key] == whole[key], key
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a merged run merges again (a row added later) and keeps each row's machine
    random_run = adaptation.run(parser.parse_args([*common, "--rows", "base,random"]), settings)
    again = adaptation.merge([merged, random_run])
    assert again["machine_by_row"] == {n: whole["machine"] for n in ("default", "full", "random")}
    with pytest.raises(SystemExit, match="more than one run"):
        adaptation.merge([json.loads(paths[0].read_text())] * 2)
    other = json.loads(paths[1].read_text()) | {"train_seed": 99}
    with pytest.raises(SystemExit, match="different plans"):
        adaptation.merge([json.loads(paths[0].read_text()), other])


def test_error_map_marks_wrong_pixels_and_ignores_unlabelled() -> None:
    prediction = np.array([[0, 1], [2, 3]])
    label = np.zeros((4, 4), dtype=np.uint8)  # class 0 everywhere but one unlabelled quarter
    label[2:, 2:] = 255
    err = adaptation.error_map(prediction, label)
    assert err.tolist() == [[0.0, 1.0], [1.0, 0.0]]  # right, wrong, wrong, ignored


def test_finetune_bench_times_each_device(tmp_path: Path) -> None:
    from ars.bench import finetune as finetune_bench

    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, build_model("tiny"), arch="tiny", version="tiny-test")
    parser = argparse.ArgumentParser()
    finetune_bench.add_arguments(parser)
    args = parser.parse_args(
        ["--iterations", "2", "--frames", "2", "--threads", "1", "--checkpoint", str(ckpt)]
    )
    settings = Settings(
        robot={"width": 160, "height": 120},
        server={"train_width": 80, "train_height": 60, "replay_frames": 2},
    )
    out = finetune_bench.run(args, settings)
    assert "cpu" in out["devices"] and out["devices"]["cpu"]["ms_per_iteration"] > 0
    assert ("cuda" in out["devices"]) == torch.cuda.is_available()
    assert ("cuda_speedup" in out) == torch.cuda.is_available()


def test_aggregate_gives_mean_and_95_percent_interval(tmp_path: Path) -> None:
    runs = [
        {"seed": 1, "train_seed": 1, "default_minus_random": 0.02, "urban_drop_max": 0.01},
        {"seed": 2, "train_seed": 2, "default_minus_random": 0.04, "urban_drop_max": 0.03},
        {"seed": 3, "train_seed": 3, "default_minus_random": 0.06, "urban_drop_max": None},
    ]
    out = adaptation.aggregate(runs)
    margin = out["default_minus_random"]
    assert margin["mean"] == pytest.approx(0.04) and (margin["min"], margin["max"]) == (0.02, 0.06)
    half = 4.303 * 0.02 / 3**0.5  # t(0.975, 2) x sd / sqrt(n)
    assert margin["ci95"] == pytest.approx([0.04 - half, 0.04 + half], abs=1e-4)
    assert out["urban_drop_max"]["mean"] == pytest.approx(0.02)  # missing values skipped
    assert out["runs"] == 3 and len(out["by_run"]) == 3
    assert "ci95_route_seeds" not in margin  # one run a route seed: the runs are the seeds
    assert out["machines"] == 0  # none of these runs names its machine
    files = []
    for i, run in enumerate(runs):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(run))
    parser = argparse.ArgumentParser()
    adaptation.add_arguments(parser)
    args = parser.parse_args(["--aggregate", *map(str, files)])
    assert adaptation.run(args, Settings())["default_minus_random"] == margin


def test_aggregate_counts_a_route_once_in_its_own_interval() -> None:
    """Two training seeds on each of 3 routes: the run interval has 5 degrees of freedom, the
    route one 2 (the routes' means), and past the t table the quantile still exceeds 1.96."""
    margins = {1: (0.00, 0.02), 2: (0.03, 0.05), 3: (0.01, 0.05)}
    runs = [
        {"seed": s, "train_seed": t, "default_minus_random": m}
        for s, pair in margins.items()
        for t, m in zip((s, s + 1000), pair, strict=True)
    ]
    margin = adaptation.aggregate(runs)["default_minus_random"]
    means = [0.01, 0.04, 0.03]
    sd = (sum((m - 0.0267) ** 2 for m in means) / 2) ** 0.5
    half = 4.303 * sd / 3**0.5
    assert margin["route_seeds"] == 3
    assert margin["ci95_route_seeds"] == pytest.approx([0.0267 - half, 0.0267 + half], abs=2e-4)
    assert (
        margin["ci95"][1] - margin["ci95"][0]
        < margin["ci95_route_seeds"][1] - margin["ci95_route_seeds"][0]
    )
    assert adaptation.t95(13) == pytest.approx(2.160)


def test_aggregate_names_the_machines_its_runs_ran_on() -> None:
    """Figures from machines with other kernels differ by more than their seeds: the aggregate
    keeps each run's machine (a merged run's per row) and counts the distinct ones."""
    epyc = {"torch": "2.14.1", "cpu": "AMD EPYC", "cpu_capability": "AVX2"}
    xeon = {"torch": "2.14.1", "cpu": "Intel Xeon", "cpu_capability": "AVX512"}
    runs = [
        {"seed": 1, "train_seed": 1, "default_minus_random": 0.01, "machine": epyc},
        {"seed": 2, "train_seed": 2, "default_minus_random": 0.02, "machine": dict(epyc)},
        {
            "seed": 3,
            "train_seed": 3,
            "default_minus_random": 0.03,
            "machine_by_row": {"default": epyc, "random": xeon},
        },
    ]
    out = adaptation.aggregate(runs)
    assert out["machines"] == 2
    assert out["by_run"][0]["machine"] == epyc
    assert out["by_run"][2]["machine_by_row"]["random"] == xeon
    assert "machine" not in out["by_run"][2]
    assert 1.96 < adaptation.t95(40) == pytest.approx(2.021, abs=0.003)
    with pytest.raises(ValueError):
        adaptation.t95(0)
