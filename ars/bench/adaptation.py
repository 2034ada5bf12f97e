"""``ars bench adaptation``: what each label buys where the robot drives next.

The on-the-fly scenario, round by round, on a rural route of stretches of different looks
(``simulator.route``). Each round the robot drives the next stretch of the route, mines the
frames it drove since the last round with the model it runs, and selects 5 % of their pixels
with the rule under test; the oracle labels them; the server fine-tunes *from the model the
robot runs* on every region labeled so far, with the shared recipe (``Recipe``); the robot takes
the result. After each round every row is evaluated on:

- ``next``: frames of the same route after the last round's (where the robot drives next);
- ``other``: frames of a different rural route (generalisation);
- ``urban``: held-out old-domain frames (forgetting).

Rows: ``base`` (no adaptation), ``label_free`` (the recipe's unlabeled-frame steps alone, no
human label), ``ars`` (the paper's rule: top 20 % frames by score, each frame's hardest
window), ``random`` (random frames, random windows), ``default`` (the robot's configured rule,
``robot.selection`` and ``robot.window``, its window spreader kept across rounds as on the
robot), ``full`` (every driven frame labeled) and, opt-in, ``oracle`` (frames and windows by
the current model's true errors: a ceiling for any error score).

Every row fine-tunes with the same recipe and the same iteration rule
(``models.adaptation.IterationRule``: iterations grow with the labeled pixels, with a floor and a
cap), so ``full`` is a converged ceiling rather than a 100-iteration snapshot, and every row's
fine-tunes pass the server's forgetting guard (``models.adaptation.bound_forgetting``, on the
server's urban gate frames, never the ``urban`` evaluation set).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import Settings

if TYPE_CHECKING:
    import numpy as np

    from common.samples import LabeledSample
    from models.checkpoint import CheckpointMeta
    from models.network import SegNet
    from models.selection import GridSpreader
    from simulator.drive import Drive
    from simulator.scene import Frame

logger = logging.getLogger(__name__)

ROWS = ("base", "label_free", "ars", "random", "default", "full")
ORACLE_ROWS = ("oracle",)
#: (frames per round, frames apart on the route, evaluation frames per set)
QUICK = {"round_frames": 80, "stride": 5, "eval_frames": 64}
FULL = {"round_frames": 150, "stride": 4, "eval_frames": 128}
#: The route "other" is evaluated on: a different seed, never one a run drives.
OTHER_ROUTE_OFFSET = 100_003
#: The evaluation sets, each row's after every round.
EVAL_SETS = ("next", "other", "urban")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="route seed (and training seed)")
    parser.add_argument("--train-seed", type=int, default=None, help="default: --seed")
    parser.add_argument("--quick", action="store_true", help="80 frames a round, 64 eval frames")
    parser.add_argument("--rounds", type=int, default=3, help="adaptation rounds")
    parser.add_argument("--round-frames", type=int, default=None, help="frames mined a round")
    parser.add_argument("--stride", type=int, default=None, help="route frames between two")
    parser.add_argument("--eval-frames", type=int, default=None, help="frames per eval set")
    parser.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"comma-separated rows, or 'all' (adds {', '.join(ORACLE_ROWS)})",
    )
    parser.add_argument("--checkpoint", default=None, help="checkpoint (default: shipped base)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument(
        "--jobs", type=int, default=None, help="rows run at once in worker processes "
        "(default: cores / threads, at most one per row; 1 on a GPU)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (default: server's)")
    parser.add_argument("--plot", default=None, help="PNG chart path (default: data dir)")
    # the recipe; defaults are the server's (common.config.ServerSettings)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--frozen-blocks", type=int, default=None)
    parser.add_argument("--replay-frames", type=int, default=None)
    parser.add_argument("--bn-frames", type=int, default=None, help="0: keep BN statistics")
    parser.add_argument("--pseudo-threshold", type=float, default=None, help="0: no pseudo")
    parser.add_argument(
        "--shared-loss", action=argparse.BooleanOptionalAction, default=None,
        help="new-domain and replay samples each take their share of the loss",
    )  # fmt: skip
    parser.add_argument(
        "--distill", type=float, default=None,
        help="weight of the replay frames' distillation to the base model (0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--cast", type=float, default=None,
        help="strength of the labelled new-domain samples' random colour cast (0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--urban-budget", type=float, default=None,
        help="forgetting guard: urban mIoU a row may lose against the base (1: no guard)",
    )  # fmt: skip
    parser.add_argument("--iter-per-frame", type=float, default=None)
    parser.add_argument("--iter-floor", type=int, default=None)
    parser.add_argument("--iter-cap", type=int, default=None)
    parser.add_argument(
        "--aggregate",
        nargs="+",
        metavar="JSON",
        help="no run: the mean and 95%% interval of the headline figures over these runs' JSON",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="no run: one run's JSON (and chart) from runs of one plan that ran other rows",
    )


@dataclass(frozen=True)
class Recipe:
    """The adaptation recipe every row shares (the server's settings unless overridden)."""

    lr: float
    batch_size: int
    replay_share: float
    replay_frames: int
    frozen_blocks: int
    bn_frames: int  # new-domain frames BN statistics are re-estimated on (0: never)
    pseudo_threshold: float  # softmax confidence of a pseudo-label (0: none)
    shared_loss: bool  # new-domain and replay samples each take their share of the loss
    distill_weight: float  # replay frames held to the base model's answers (0: not)
    colour_cast: float  # strength of the labelled samples' random colour cast (0: none)
    urban_budget: float  # old-domain mIoU a round may lose against the base (1: no guard)
    guard_frames: int  # the guard's urban frames (the server's gate set)
    per_frame: float
    floor: int
    cap: int
    seed: int


@dataclass
class Row:
    """One row's state across rounds: the model the robot runs and the labels it has."""

    name: str
    model: SegNet
    labeled: list[LabeledSample] = field(default_factory=list)
    spreader: GridSpreader | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    guard: list[LabeledSample] = field(default_factory=list)  # the server's urban gate frames
    anchor: float = 0.0  # the base model's urban mIoU on them
    teacher: SegNet | None = None  # the base model, when the replay frames are distilled


def _recipe(args: argparse.Namespace, settings: Settings) -> Recipe:
    ss = settings.server

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return Recipe(
        lr=pick(args.lr, ss.lr),
        batch_size=ss.batch_size,
        replay_share=ss.replay_share,
        replay_frames=pick(args.replay_frames, ss.replay_frames),
        frozen_blocks=pick(args.frozen_blocks, ss.frozen_blocks),
        bn_frames=pick(args.bn_frames, ss.adapt_bn_frames),
        pseudo_threshold=pick(args.pseudo_threshold, ss.pseudo_threshold),
        shared_loss=pick(args.shared_loss, ss.shared_loss),
        distill_weight=pick(args.distill, ss.distill_weight),
        colour_cast=pick(args.cast, ss.colour_cast),
        urban_budget=pick(args.urban_budget, ss.urban_budget),
        guard_frames=ss.eval_frames,
        per_frame=pick(args.iter_per_frame, ss.iterations_per_frame),
        floor=pick(args.iter_floor, ss.iterations),
        cap=pick(args.iter_cap, ss.iterations_cap),
        seed=args.seed if args.train_seed is None else args.train_seed,
    )


def _eval_indices(start: int, span: int, n: int) -> list[int]:
    """n route frame indices spread evenly over [start, start + span)."""
    return [start + (k * span) // n for k in range(n)]


def _samples(frames: Sequence[Frame], size: tuple[int, int]) -> list[LabeledSample]:
    from common.samples import resize_sample

    return [resize_sample(f.image, f.label, size) for f in frames]


@dataclass(frozen=True)
class Mined:
    """A round frame as a row's model saw it."""

    score: float
    box: tuple[int, int, int, int]
    entropy: np.ndarray
    errors: np.ndarray | None


def _mine(
    model: SegNet,
    frames: Sequence[Frame],
    infer_hw: tuple[int, int],
    region_frac: float,
    spreader: GridSpreader | None,
    with_errors: bool,
) -> list[Mined]:
    """Score every frame and pick its window as the robot does (``models.mining.mine``); with
    a spreader its ``choose`` picks the window (the robot's ``robot.window = "spread"``)."""
    import torch

    from models.entropy import normalized_entropy
    from models.mining import mine
    from models.network import preprocess

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for f in frames:
            low = model.forward_lowres(preprocess(f.image, infer_hw).to(device))[0].float().cpu()
            rule = spreader.choose if spreader is not None else None
            m = mine(low, (f.image.shape[0], f.image.shape[1]), region_frac, window_rule=rule)
            errors = None
            if with_errors:
                errors = error_map(low.numpy().argmax(0), f.label)
            out.append(Mined(m.score, m.box, normalized_entropy(low), errors))
    return out


def error_map(prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    """1.0 where the prediction (h x w) is wrong about the frame's ground truth, else 0.0.

    The label is resized to the prediction's grid by nearest neighbour; ignored pixels (255)
    count as right.
    """
    import numpy as np
    from PIL import Image

    h, w = prediction.shape
    truth = np.asarray(Image.fromarray(label).resize((w, h), Image.Resampling.NEAREST))
    wrong: np.ndarray = np.logical_and(prediction != truth, truth != 255)
    return wrong.astype(np.float32)


def _select(
    name: str,
    frames: Sequence[Frame],
    mined: Sequence[Mined],
    settings: Settings,
    rng: np.random.Generator,
) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(frame position in the round, box) pairs: 5 % of the round's pixels by `name`'s rule."""
    from models.mining import window_box, window_size
    from models.selection import (
        random_window,
        select_diverse,
        select_random,
        select_stratified,
        select_top,
        spread_windows,
    )

    rs = settings.robot
    ratio = rs.select_ratio
    n = len(frames)
    frame_hw = (int(frames[0].image.shape[0]), int(frames[0].image.shape[1]))
    if name == "random":
        win = (round(frame_hw[0] * rs.region_frac), round(frame_hw[1] * rs.region_frac))
        return [
            (i, random_window(frame_hw, win, rng)) for i in sorted(select_random(n, ratio, rng))
        ]
    scores = [m.score for m in mined]
    if name == "ars":
        return [(i, mined[i].box) for i in select_top(scores, ratio)]
    if name == "default":
        if rs.selection == "top":
            idx = select_top(scores, ratio)
        elif rs.selection == "stratified":
            idx = select_stratified(scores, ratio)
        else:
            idx = select_diverse(scores, ratio, list(range(n)), 1.0 / ratio)
        return [(i, mined[i].box) for i in idx]
    if name == "oracle":
        maps = [m.errors for m in mined if m.errors is not None]
        idx = select_diverse([float(e.mean()) for e in maps], ratio, list(range(n)), 1.0 / ratio)
        map_hw = (int(maps[0].shape[0]), int(maps[0].shape[1]))
        win = window_size(map_hw, rs.region_frac)
        spots = spread_windows([maps[i] for i in idx], win)
        return [
            (i, window_box(at, win, map_hw, frame_hw, rs.region_frac))
            for i, at in zip(idx, spots, strict=True)
        ]
    raise ValueError(f"no selection rule for row {name!r}")


def _evaluate(model: SegNet, sets: dict[str, list[LabeledSample]]) -> dict[str, dict[str, object]]:
    from models.metrics import scores
    from models.training import confusion

    return {name: scores(confusion(model, samples)) for name, samples in sets.items()}


def _adapt_and_train(
    row: Row,
    new_frames: Sequence[np.ndarray],
    replay: Sequence[LabeledSample],
    recipe: Recipe,
    train_hw: tuple[int, int],
    seed: int,
) -> dict[str, Any]:
    """The server's side of one round for one row: BN statistics on the new frames and replay,
    pseudo-labels on the frames nobody labeled, then the fine-tune by the iteration rule."""
    from models.adaptation import (
        IterationRule,
        bound_forgetting,
        labeled_frames,
        pseudo_labels,
        reestimate_batchnorm,
        snapshot,
    )
    from models.training import evaluate, finetune

    out: dict[str, Any] = {}
    running = snapshot(row.model)  # the robot's model, for the forgetting guard
    if recipe.bn_frames > 0:
        recent = list(new_frames)[-recipe.bn_frames :]
        reestimate_batchnorm(row.model, recent, [s.image for s in replay], train_hw)
    pseudo: list[LabeledSample] = []
    if recipe.pseudo_threshold > 0 and row.name != "full":
        pseudo = pseudo_labels(row.model, new_frames, train_hw, recipe.pseudo_threshold)
    frames_eq = labeled_frames(row.labeled)
    rule = IterationRule(recipe.per_frame, recipe.floor, recipe.cap)
    iterations = rule(frames_eq) if (row.labeled or pseudo) else 0
    if iterations:
        finetune(
            row.model,
            row.labeled,
            replay,
            iterations=iterations,
            lr=recipe.lr,
            batch_size=recipe.batch_size,
            replay_share=recipe.replay_share,
            frozen_blocks=recipe.frozen_blocks,
            seed=seed,
            size=train_hw,
            pseudo=pseudo,
            shared_loss=recipe.shared_loss,
            teacher=row.teacher,
            distill_weight=recipe.distill_weight,
            colour_cast=recipe.colour_cast,
        )
    if row.guard and (iterations or recipe.bn_frames > 0):  # frames only when the guard is on
        guard = bound_forgetting(
            row.model, running, lambda m: evaluate(m, row.guard), row.anchor, recipe.urban_budget
        )
        out["blend"] = guard.blend
        out["guard_urban"] = round(guard.old_miou, 4)
    out["iterations"] = iterations
    out["labeled_frames"] = round(frames_eq, 3)
    out["pseudo_frames"] = len(pseudo)
    return out


def summary(rows: dict[str, list[dict[str, Any]]], base: dict[str, Any]) -> dict[str, Any]:
    """The headline figures on next mIoU (round 1 and the last round) for the default rule."""
    out: dict[str, Any] = {}

    def nxt(name: str, r: int, key: str = "miou") -> float:
        return float(rows[name][r]["next"][key])

    b = float(base["next"]["miou"])
    last = len(next(iter(rows.values()))) - 1 if rows else 0
    if "default" in rows and "full" in rows:
        for tag, r in (("round1", 0), (f"round{last + 1}", last)):
            full_gain = nxt("full", r) - b
            out[f"gain_share_{tag}"] = (
                round((nxt("default", r) - b) / full_gain, 4) if full_gain > 0 else None
            )
            out[f"miou_ratio_{tag}"] = round(nxt("default", r) / max(1e-9, nxt("full", r)), 4)
    for rule in ("default", "oracle"):  # the oracle's margin: what any score could reach
        if rule in rows and "random" in rows:
            margins = [nxt(rule, r) - nxt("random", r) for r in range(last + 1)]
            out[f"{rule}_minus_random"] = round(sum(margins) / len(margins), 4)
            out[f"{rule}_minus_random_rounds"] = [round(m, 4) for m in margins]
    if "default" in rows:
        out["next_pixel_acc_last"] = nxt("default", last, "pixel_acc")
    drops = [
        float(base["urban"]["miou"]) - float(rnd["urban"]["miou"])
        for rounds in rows.values()
        for rnd in rounds
    ]
    out["urban_drop_max"] = round(max(drops), 4) if drops else None
    return out


#: Two-sided 95 % Student t quantiles by degrees of freedom (1..30).
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t95(df: int) -> float:
    """The two-sided 95 % Student t quantile; past the table, z + (z^3 + z) / (4 df), which is
    within 0.003 of it from 30 degrees of freedom on (1.96 alone would narrow the interval)."""
    if df < 1:
        raise ValueError(f"t95: {df} degrees of freedom")
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.37 / df


def mean_ci95(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """The mean and its 95 % Student t interval (None from one value)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, None
    half = t95(n - 1) * statistics.stdev(values) / n**0.5
    return mean, [round(mean - half, 4), round(mean + half, 4)]


HEADLINE = (
    "default_minus_random",
    "oracle_minus_random",
    "gain_share_round1",
    "gain_share_round3",
    "miou_ratio_round1",
    "miou_ratio_round3",
    "urban_drop_max",
    "next_pixel_acc_last",
)


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean, 95 % interval (Student t), min and max of each headline figure over runs (route
    seeds x training seeds), and each run's figures.

    Runs on one route share its frames, so they are not independent draws: where a route seed
    has more than one run, ``ci95_route_seeds`` is the interval over the route seeds' means
    (one value a route seed), the one to read a target from; ``ci95`` counts every run.

    Each run in ``by_run`` names the machine(s) it ran on, and ``machines`` counts the distinct
    ones: runs from machines with other kernels differ by more than their seeds
    (docs/adaptation.md, *Reproducibility*)."""
    out: dict[str, Any] = {"runs": len(results)}
    for key in HEADLINE:
        by_route: dict[Any, list[float]] = {}
        for r in results:
            if r.get(key) is not None:
                by_route.setdefault(r.get("seed"), []).append(float(r[key]))
        values = [v for route in by_route.values() for v in route]
        if not values:
            continue
        mean, ci = mean_ci95(values)
        row: dict[str, Any] = {"mean": round(mean, 4), "min": min(values), "max": max(values)}
        if ci is not None:
            row["ci95"] = ci
        if len(by_route) < len(values):
            row["route_seeds"] = len(by_route)
            row["ci95_route_seeds"] = mean_ci95([statistics.fmean(v) for v in by_route.values()])[1]
        out[key] = row
    out["by_run"] = [
        {
            "seed": r.get("seed"),
            "train_seed": r.get("train_seed"),
            **{k: r.get(k) for k in HEADLINE},
            **{k: r[k] for k in ("machine", "machine_by_row") if k in r},
        }
        for r in results
    ]
    out["machines"] = len({json.dumps(m, sort_keys=True) for r in results for m in _machines(r)})
    return out


def _machines(result: dict[str, Any]) -> list[Any]:
    """The machine fingerprints a run's rows ran on: one, or each merged row's."""
    if result.get("machine") is not None:
        return [result["machine"]]
    return [m for m in (result.get("machine_by_row") or {}).values() if m is not None]


def _row_machine(result: dict[str, Any], row: str) -> Any:
    """The machine one row ran on: a plain run's, or a merged run's entry for the row."""
    if result.get("machine") is not None:
        return result["machine"]
    return (result.get("machine_by_row") or {}).get(row)


#: What runs of one plan share; `merge` refuses runs that differ in any of them.
_PLAN_KEYS = ("seed", "train_seed", "quick", "device", "version", "route", "recipe", "base")


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run from runs of the same plan that ran other rows: rows share only the plan, so
    the rows of several runs (machines, or a row added later) are the rows of one run. The
    base model's scores must agree to the last digit, and no row may come twice."""
    if not results:
        raise SystemExit("--merge needs at least one JSON")
    first = results[0]
    out: dict[str, Any] = {k: first.get(k) for k in _PLAN_KEYS}
    out["merged"] = len(results)
    rows: dict[str, list[dict[str, Any]]] = {}
    machines: dict[str, Any] = {}  # each row's: its figures depend on the kernels it ran
    for r in results:
        differ = [k for k in _PLAN_KEYS if r.get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"--merge: runs of different plans (they differ in {differ})")
        for name, rounds in r["rows"].items():
            if name in rows:
                raise SystemExit(f"--merge: row {name!r} is in more than one run")
            rows[name] = rounds
            machines[name] = _row_machine(r, name)
            if name == "default" and "default_rule" in r:
                out["default_rule"] = r["default_rule"]
    out["rows"] = rows
    out["machine_by_row"] = machines
    out.update(summary(rows, first["base"]))
    out["timing"] = {
        "cpu_seconds": round(sum(r.get("timing", {}).get("cpu_seconds") or 0 for r in results), 1)
    }
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    """A run's (or a merged run's) next mIoU per round per row, the base as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 3.8), dpi=110)
    colours = {
        "label_free": "#999999",
        "ars": "#d62728",
        "random": "#1f77b4",
        "default": "#2ca02c",
        "full": "#000000",
        "oracle": "#9467bd",
    }
    rows, route = result["rows"], result["route"]
    title = (
        f"adaptation: route seed {result['seed']}, {route['rounds']} rounds x "
        f"{route['frames_per_round']} frames, next = the {route['eval_frames']} frames ahead"
    )
    start = float(result["base"]["next"]["miou"])
    ends: list[tuple[float, int, str]] = []  # (last next mIoU, last round, row)
    for name, rounds in rows.items():
        xs = list(range(len(rounds) + 1))  # round 0: the base model every row starts from
        ys = [start, *(float(r["next"]["miou"]) for r in rounds)]
        ax.plot(xs, ys, marker="o", label=name, color=colours.get(name))
        ends.append((ys[-1], xs[-1], name))
    # each row's last figure beside its last point, in its colour, moved apart where rows end
    # close together (one label over another reads as neither)
    low, high = ax.get_ylim()
    gap, placed = 0.045 * (high - low), -float("inf")
    for y, x, name in sorted(ends):
        placed = max(y, placed + gap)
        ax.annotate(f"{y:.3f}", (x, y), xytext=(x + 0.06, placed), textcoords="data",
                    va="center", fontsize=7, color=colours.get(name))  # fmt: skip
    ax.axhline(start, ls="--", color="#888888", label="base")
    ax.set_xlabel("round (5 % of the new frames' pixels labeled each round; full: 100 %)")
    ax.set_ylabel("next mIoU (route ahead)")
    ax.set_xticks(list(range(len(next(iter(rows.values()), [])) + 1)))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


@dataclass(frozen=True)
class Plan:
    """What every row's rounds share: picklable, so a worker process can run a row alone."""

    seed: int
    rounds: int
    per_round: int
    stride: int
    n_eval: int
    recipe: Recipe
    device: str
    checkpoint: str | None
    threads: int
    settings: Settings
    #: A folder with the frames below rendered once for the run (``rendered_once``), or None.
    store: str | None = None

    def route(self, other: bool = False) -> Drive:
        from simulator.drive import Drive

        rs = self.settings.robot
        seed = self.seed + OTHER_ROUTE_OFFSET if other else self.seed
        return Drive("route", seed=seed, width=rs.width, height=rs.height)

    def round_indices(self, r: int) -> list[int]:
        """Route frame indices of round ``r`` (0-based)."""
        return [(r * self.per_round + j) * self.stride for j in range(self.per_round)]

    def next_indices(self) -> list[int]:
        driven = self.rounds * self.per_round * self.stride
        return _eval_indices(driven, driven, self.n_eval)

    def round_frames(self, r: int) -> list[Frame]:
        """The frames round ``r`` (0-based) drives, with ground truth."""
        if self.store is not None:
            from ars.bench.frame_store import load_frames

            return load_frames(Path(self.store) / f"round-{r}")
        route = self.route()
        return [route.frame(i) for i in self.round_indices(r)]

    def sets(self) -> dict[str, list[LabeledSample]]:
        """The route ahead of the last round, another route, the old domain."""
        if self.store is not None:
            from ars.bench.frame_store import load_samples

            return {name: load_samples(Path(self.store) / name) for name in EVAL_SETS}
        return self.render_sets()

    def render_sets(self) -> dict[str, list[LabeledSample]]:
        from simulator.sets import heldout_set

        rs = self.settings.robot
        infer_hw = (rs.infer_height, rs.infer_width)
        route, other = self.route(), self.route(other=True)
        driven = self.rounds * self.per_round * self.stride
        return {
            "next": _samples([route.frame(i) for i in self.next_indices()], infer_hw),
            "other": _samples(
                [other.frame(i) for i in _eval_indices(0, driven, self.n_eval)], infer_hw
            ),
            "urban": heldout_set("urban", self.n_eval, self.seed, infer_hw),
        }

    def base_model(self) -> tuple[SegNet, CheckpointMeta]:
        from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

        model, meta = load_checkpoint(self.checkpoint or DEFAULT_CHECKPOINT)
        model.to(self.device).eval()
        return model, meta


#: A row's rounds report each round as it ends (the progress bar); in a worker, via a queue.
Progress = Callable[[str, int, dict[str, Any]], None]


def run_row(name: str, plan: Plan, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Every round of one row, from the base model: mine, select, label, fine-tune, evaluate.

    Rows share nothing but the plan, so each can run in its own process; the result does not
    depend on which (the random row's generator is seeded per row)."""
    import numpy as np
    import torch

    from common.samples import resize_sample
    from models.data import region_training_sample
    from models.selection import GridSpreader
    from simulator.oracle import OracleAnnotator
    from simulator.sets import source_replay_set

    torch.set_num_threads(plan.threads)
    rs, ss, recipe = plan.settings.robot, plan.settings.server, plan.recipe
    infer_hw = (rs.infer_height, rs.infer_width)
    train_hw = (ss.train_height, ss.train_width)
    sets = plan.sets()
    replay = source_replay_set(recipe.replay_frames, 0, train_hw) if recipe.replay_frames else []
    model, _ = plan.base_model()
    row = Row(name, model)
    if plan.recipe.urban_budget < 1.0:
        from models.training import evaluate
        from simulator.sets import SimulatorSets

        row.guard = SimulatorSets().heldout("urban", plan.recipe.guard_frames, train_hw)
        row.anchor = evaluate(model, row.guard)
    if recipe.distill_weight > 0 and replay:
        row.teacher, _ = plan.base_model()
    if name == "default" and rs.window == "spread":
        row.spreader = GridSpreader()  # one for the stream, as on the robot
    rng = np.random.default_rng(plan.seed)
    oracle = OracleAnnotator(cache_size=4)
    new_frames: list[np.ndarray] = []  # every driven frame at the training size
    for r in range(plan.rounds):
        t1, c1 = time.perf_counter(), time.process_time()
        frames = plan.round_frames(r)
        new_frames += [
            resize_sample(f.image, np.zeros(f.label.shape, np.uint8), train_hw).image
            for f in frames
        ]
        if name == "full":
            row.labeled += _samples(frames, train_hw)
        elif name != "label_free":
            mined: list[Mined] = []
            if name != "random":
                mined = _mine(
                    row.model, frames, infer_hw, rs.region_frac, row.spreader, name == "oracle"
                )
            for i, box in _select(name, frames, mined, plan.settings, rng):
                f = frames[i]
                x, y, w, h = box
                label = oracle.label_crop(f.frame_id, box)
                crop = f.image[y : y + h, x : x + w]
                size = (int(f.image.shape[1]), int(f.image.shape[0]))
                row.labeled.append(region_training_sample(crop, label, box, size, train_hw))
        info = _adapt_and_train(row, new_frames, replay, recipe, train_hw, recipe.seed + r)
        info.update(_evaluate(row.model, sets))
        info["seconds"] = round(time.perf_counter() - t1, 1)
        # CPU time does not depend on what else runs: the budget's measure on a shared machine
        info["cpu_seconds"] = round(time.process_time() - c1, 1)
        row.rounds.append(info)
        logger.info(
            "adaptation seed %d round %d %s: next %.3f urban %.3f (%d it)",
            plan.seed, r + 1, name, info["next"]["miou"], info["urban"]["miou"],
            info["iterations"],
        )  # fmt: skip
        if progress is not None:
            progress(name, r, info)
    return row.rounds


def _row_in_worker(name: str, plan: Plan, queue: Any) -> list[dict[str, Any]]:
    def tell(row: str, r: int, info: dict[str, Any]) -> None:
        queue.put((row, r, info["next"]["miou"]))

    return run_row(name, plan, tell)


#: Rows by their share of the work (full trains the most), longest first to balance workers.
_COST = {"full": 3.0, "oracle": 1.2, "default": 1.1, "ars": 1.1, "random": 1.0, "label_free": 0.2}


def run_rows(
    names: Sequence[str], plan: Plan, jobs: int, progress: Progress
) -> dict[str, list[dict[str, Any]]]:
    """Each row's rounds, ``jobs`` rows at a time in worker processes (1: in this process)."""
    if jobs <= 1:
        return {name: run_row(name, plan, progress) for name in names}
    import concurrent.futures as cf
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # torch and threads: never fork
    with ctx.Manager() as manager, cf.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        updates = manager.Queue()
        order = sorted(names, key=lambda n: -_COST.get(n, 1.0))
        futures = {pool.submit(_row_in_worker, n, plan, updates): n for n in order}
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=0.5)
            for f in done:
                f.result()  # a worker's exception, here
            while True:
                try:
                    row, r, miou = updates.get_nowait()
                except queue_mod.Empty:
                    break
                progress(row, r, {"next": {"miou": miou}})
        results = {futures[f]: f.result() for f in futures}
    return {name: results[name] for name in names}


def default_jobs(rows: int, threads: int, device: str) -> int:
    """Worker processes: one per ``threads`` cores, at most one per row; one on a GPU."""
    import os

    if device != "cpu":
        return 1
    return max(1, min(rows, (os.cpu_count() or 1) // max(1, threads)))


@contextlib.contextmanager
def rendered_once(plan: Plan) -> Iterator[tuple[Plan, float]]:
    """The plan, with every frame its rows share rendered once into a scratch folder that
    lives as long as the run, and the CPU seconds rendering took. Why: each row rendered its
    own route frames and evaluation sets, 10 CPU-seconds a row of a quick run (0.019 s a
    route frame), about 2 % of a run of every row."""
    import tempfile

    from ars.bench.frame_store import save_frames, save_samples

    with tempfile.TemporaryDirectory(prefix="ars-adaptation-") as tmp:
        root = Path(tmp)
        c0 = time.process_time()
        for r in range(plan.rounds):
            save_frames(root / f"round-{r}", plan.round_frames(r))
        sets = plan.render_sets()
        for name in EVAL_SETS:
            save_samples(root / name, sets[name])
        yield replace(plan, store=tmp), time.process_time() - c0


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import torch

    from models.network import resolve_device

    if args.aggregate:
        return aggregate([json.loads(Path(p).read_text()) for p in args.aggregate])
    if args.merge:
        merged = merge([json.loads(Path(p).read_text()) for p in args.merge])
        if args.plot:
            plot(merged, Path(args.plot))
            merged["plot"] = str(args.plot)
        return merged
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    preset = QUICK if args.quick else FULL
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    if wanted == ["all"]:
        wanted = [*ROWS, *ORACLE_ROWS]
    unknown = set(wanted) - set(ROWS) - set(ORACLE_ROWS)
    if unknown or not wanted:
        raise SystemExit(f"rows must be among {ROWS + ORACLE_ROWS} or 'all', got {args.rows!r}")
    plan = Plan(
        seed=args.seed,
        rounds=max(1, args.rounds),
        per_round=args.round_frames or preset["round_frames"],
        stride=args.stride or preset["stride"],
        n_eval=args.eval_frames or preset["eval_frames"],
        recipe=_recipe(args, settings),
        device=resolve_device(args.device or settings.server.device),
        checkpoint=str(args.checkpoint) if args.checkpoint else None,
        threads=args.threads,
        settings=settings,
    )
    if plan.recipe.urban_budget < 1.0 and plan.seed % 1000 == 0:
        raise SystemExit(
            f"route seed {plan.seed}: its urban evaluation frames would include the forgetting "
            "guard's (the server's seed-0 set); pick a seed that is not a multiple of 1000"
        )
    from models.transforms import MAX_CAST

    if not 0 <= plan.recipe.colour_cast <= MAX_CAST:  # refused before any rendering
        raise SystemExit(
            f"--cast {plan.recipe.colour_cast}: the colour cast's strength is 0..{MAX_CAST:g}"
        )
    names = [n for n in wanted if n != "base"]
    jobs = args.jobs or default_jobs(len(names), plan.threads, plan.device)
    with rendered_once(plan) as (rendered, render_cpu):
        timing = {"render": round(time.perf_counter() - start, 1)}
        timing["render_cpu_seconds"] = round(render_cpu, 1)
        return _run_plan(rendered, names, jobs, args, start, timing)


def _run_plan(
    plan: Plan,
    names: list[str],
    jobs: int,
    args: argparse.Namespace,
    start: float,
    timing: dict[str, float],
) -> dict[str, Any]:
    """The base model's scores, every row's rounds, the summary, the chart."""
    from tqdm import tqdm

    from models.seeding import compute_fingerprint
    from simulator.scene import route_stretch

    settings, rs = plan.settings, plan.settings.robot
    t0, c0 = time.perf_counter(), time.process_time()
    base_model, meta = plan.base_model()
    base_scores = _evaluate(base_model, plan.sets())
    del base_model
    timing["base"] = round(time.perf_counter() - t0, 1)
    timing["base_cpu_seconds"] = round(time.process_time() - c0, 1)
    looks = [
        sorted({route_stretch(plan.seed, i) for i in plan.round_indices(r)})
        for r in range(plan.rounds)
    ]
    bar = tqdm(
        total=plan.rounds * len(names),
        desc=f"adaptation ({jobs} worker{'s' if jobs > 1 else ''})",
        disable=bool(getattr(args, "json", False)),
        unit="fine-tune",
    )

    def progress(name: str, r: int, info: dict[str, Any]) -> None:
        bar.set_postfix_str(f"{name} round {r + 1}: next {info['next']['miou']:.3f}")
        bar.update(1)

    t0 = time.perf_counter()
    by_row = run_rows(names, plan, jobs, progress)
    bar.close()
    timing["rows"] = round(time.perf_counter() - t0, 1)
    timing["row_seconds"] = round(sum(i["seconds"] for rnds in by_row.values() for i in rnds), 1)
    row_cpu = sum(i["cpu_seconds"] for rnds in by_row.values() for i in rnds)
    timing["cpu_seconds"] = round(
        timing["render_cpu_seconds"] + timing["base_cpu_seconds"] + row_cpu, 1
    )

    next_idx = plan.next_indices()
    result: dict[str, Any] = {
        "seed": plan.seed,
        "train_seed": plan.recipe.seed,
        "quick": bool(args.quick),
        "device": plan.device,
        "jobs": jobs,
        "threads": plan.threads,
        "machine": compute_fingerprint(plan.device),
        "checkpoint": plan.checkpoint or "(shipped base)",
        "version": meta.version,
        "route": {
            "seed": plan.seed,
            "rounds": plan.rounds,
            "frames_per_round": plan.per_round,
            "stride": plan.stride,
            "looks_per_round": looks,
            "next_frames": [next_idx[0], next_idx[-1]],
            "next_looks": sorted({route_stretch(plan.seed, i) for i in next_idx}),
            "eval_frames": plan.n_eval,
        },
        "budget_pixels": round(rs.select_ratio * rs.region_frac**2, 4),
        "default_rule": {"selection": rs.selection, "window": rs.window},
        "recipe": {k: v for k, v in plan.recipe.__dict__.items()},
        "base": base_scores,
        "rows": by_row,
    }
    result.update(summary(by_row, base_scores))
    result["timing"] = timing
    result["seconds"] = round(time.perf_counter() - start, 1)
    path = Path(args.plot) if args.plot else settings.data_dir / f"adaptation-s{args.seed}.png"
    if by_row:
        plot(result, path)
        result["plot"] = str(path)
    return result
