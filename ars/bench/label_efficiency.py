"""``ars bench label-efficiency``: how much of full supervision 5% of the pixels buys.

One rural Drive is mined exactly as the robot mines it (low-resolution logits at the robot's
inference size, ``models.mining.mine``), regions become training samples by the server's rule
(``models.data.region_training_sample``), labels come from the oracle annotator, and every row
fine-tunes a fresh copy of the base model with the server's recipe (``models.training.finetune``,
same iterations, optimizer, replay and seed), then is evaluated on held-out rural and urban frames
of seeds disjoint from the drive's. Rows:

- ``base``: no fine-tuning;
- ``ars``: the robot's rule, ``models.selection.select_top`` (top 20% frames by score), each
  frame's hardest half-by-half window: 5% of the drive's pixels;
- ``random``: random frames, random windows of the same size (same 5%);
- ``diverse``: ``models.selection.select_diverse`` (hardest first, no two frames closer than
  ``--min-gap`` frames on the road), the mined windows (same 5%);
- ``spread``: the ``diverse`` frames, each with the hardest of the 3x3 grid windows least
  used so far (``models.selection.spread_windows``), so windows cover the whole image (same 5%);
- ``novelty``: frames by mean feature novelty (``models.novelty``: distance to the old
  domain's prototype of the predicted class), ``select_diverse``, windows spread over the
  grid by novelty (same 5%);
- ``spread_live``: the ``diverse`` frames, each with the window a ``GridSpreader`` chose for
  it when it was mined, in drive order: the robot's ``robot.window = "spread"``, which spreads
  windows over all frames as they come, not over the selected ones (same 5%);
- ``coreset``: k-center greedy over the 3x3 grid windows' backbone features
  (``models.coreset``): each pick the window least like every window picked so far, one per
  frame (same 5%);
- ``full``: every frame fully labeled (100%), at the same scale.

Two more rows run only when asked for (``--rows all`` or by name), because they read the
ground truth no robot has: ceilings for any score that tries to find the model's errors.

- ``oracle_hard``: frames by the base model's true error rate (``select_diverse``), each with
  its window of most errors: a perfect error score under the paper's hardest-window rule;
- ``oracle_spread``: the same frames, windows spread over the grid by the true error map.

``--repeats R`` fine-tunes every row R times (training seeds seed .. seed+R-1) and reports the
mean, with each run's figures under ``runs``: one fine-tune is one draw of a noisy process.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import Settings

if TYPE_CHECKING:
    import numpy as np

    from common.samples import LabeledSample
    from models.mining import MiningResult
    from models.network import SegNet
    from models.novelty import Prototypes
    from simulator.drive import Drive

logger = logging.getLogger(__name__)

QUICK = {"frames": 150, "eval_frames": 16}
FULL = {"frames": 300, "eval_frames": 40}
ROWS = ("base", "ars", "random", "diverse", "spread", "spread_live", "novelty", "coreset", "full")
#: Rows that select with the ground truth (ceilings, not rules a robot can run): opt-in.
ORACLE_ROWS = ("oracle_hard", "oracle_spread")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="drive, held-out and training seed")
    parser.add_argument("--quick", action="store_true", help="150 frames, 16 eval frames/domain")
    parser.add_argument("--frames", type=int, default=None, help="drive frames (default 300)")
    parser.add_argument("--eval-frames", type=int, default=None, help="held-out frames/domain")
    parser.add_argument("--iterations", type=int, default=None, help="default: server's")
    parser.add_argument("--lr", type=float, default=None, help="default: server's")
    parser.add_argument("--replay-share", type=float, default=None, help="default: server's")
    parser.add_argument("--replay-frames", type=int, default=None, help="default: server's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: server's")
    parser.add_argument("--frozen-blocks", type=int, default=None, help="default: server's")
    parser.add_argument("--repeats", type=int, default=1, help="fine-tunes per row (mean)")
    parser.add_argument("--ratio", type=float, default=None, help="default: robot's select_ratio")
    parser.add_argument(
        "--min-gap", type=float, default=None, help="diverse: frames apart (default 1/ratio)"
    )
    parser.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"comma-separated rows, or 'all' (adds {', '.join(ORACLE_ROWS)})",
    )
    parser.add_argument("--checkpoint", default=None, help="checkpoint (default: shipped base)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--plot", default=None, help="PNG chart path (default: data dir)")


@dataclass(frozen=True)
class MinedFrame:
    """One drive frame as the robot saw it: its mining result and its mined crop."""

    index: int
    frame_id: str
    mining: MiningResult
    crop: np.ndarray
    frame_hw: tuple[int, int]
    entropy: np.ndarray  # normalised entropy at the logits' resolution
    prediction: np.ndarray  # predicted class at the logits' resolution
    novelty: np.ndarray | None  # feature novelty at the features' resolution (models.novelty)
    cells: np.ndarray  # unit backbone feature of each 3x3 grid window (models.coreset)
    feature_hw: tuple[int, int]  # the feature map the cells are windows of


@dataclass(frozen=True)
class Recipe:
    """The fine-tuning recipe every row shares."""

    iterations: int
    lr: float
    batch_size: int
    replay_share: float
    replay_frames: int
    frozen_blocks: int
    seed: int
    repeats: int = 1


def mine_frame(
    model: SegNet,
    index: int,
    frame_id: str,
    image: np.ndarray,
    infer_hw: tuple[int, int],
    region_frac: float,
    prototypes: Prototypes | None = None,
) -> MinedFrame:
    """Score a frame and find its hardest box exactly as the robot's inference worker does.

    The logits are ``model.forward_lowres``'s (backbone then classifier, one pass); with
    `prototypes` the same pass's features give the frame's novelty map too, and the features
    give every frame its grid windows' features for ``coreset``.
    """
    from models.coreset import window_features
    from models.entropy import normalized_entropy
    from models.mining import mine
    from models.network import preprocess
    from models.novelty import features_and_logits, novelty_map

    high, low = features_and_logits(model, preprocess(image, infer_hw))
    high, low = high.cpu(), low.cpu()
    frame_hw = (int(image.shape[0]), int(image.shape[1]))
    m = mine(low, frame_hw, region_frac)
    x, y, w, h = m.box
    crop = image[y : y + h, x : x + w].copy()
    novelty = novelty_map(high, low, prototypes) if prototypes is not None else None
    feature_hw = (int(high.shape[1]), int(high.shape[2]))
    cells = window_features(high, region_frac)
    entropy = normalized_entropy(low)
    prediction = low.numpy().argmax(0)
    return MinedFrame(
        index, frame_id, m, crop, frame_hw, entropy, prediction, novelty, cells, feature_hw
    )


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


def region_samples(
    picks: Sequence[tuple[str, np.ndarray, tuple[int, int, int, int], tuple[int, int]]],
    train_hw: tuple[int, int],
) -> list[LabeledSample]:
    """(frame id, crop, box, frame HxW) -> oracle-labeled training samples (server's rule)."""
    from models.data import region_training_sample
    from simulator.oracle import OracleAnnotator

    oracle = OracleAnnotator(cache_size=4)
    out = []
    for frame_id, crop, box, (fh, fw) in picks:
        label = oracle.label_crop(frame_id, box)
        out.append(region_training_sample(crop, label, box, (fw, fh), train_hw))
    return out


def pixel_fraction(
    boxes: Sequence[tuple[int, int, int, int]], frame_hw: tuple[int, int], n: int
) -> float:
    """Labeled pixels over all pixels of the n frames considered."""
    return sum(w * h for _, _, w, h in boxes) / (n * frame_hw[0] * frame_hw[1])


def _train_eval(
    base: SegNet,
    samples: Sequence[LabeledSample],
    replay: Sequence[LabeledSample],
    recipe: Recipe,
    train_hw: tuple[int, int],
    evals: Mapping[str, Sequence[LabeledSample]],
) -> dict[str, Any]:
    """Fine-tune a copy of `base` recipe.repeats times (seeds seed, seed+1, ...), evaluate each.

    The row's figures are the runs' mean; with more than one run, each run's are in ``runs``
    and the range (max - min) of each figure in ``range_{figure}``.
    """
    from models.training import evaluate, finetune

    if not samples:
        return {f"miou_{k}": round(evaluate(base, v), 4) for k, v in evals.items()}
    runs = []
    for r in range(recipe.repeats):
        model = copy.deepcopy(base)
        finetune(
            model,
            samples,
            replay,
            iterations=recipe.iterations,
            lr=recipe.lr,
            batch_size=recipe.batch_size,
            replay_share=recipe.replay_share,
            frozen_blocks=recipe.frozen_blocks,
            seed=recipe.seed + r,
            size=train_hw,
        )
        runs.append({f"miou_{k}": round(evaluate(model, v), 4) for k, v in evals.items()})
    out: dict[str, Any] = {k: round(sum(run[k] for run in runs) / len(runs), 4) for k in runs[0]}
    if len(runs) > 1:
        out["runs"] = runs
        for k in runs[0]:
            out[f"range_{k}"] = round(max(run[k] for run in runs) - min(run[k] for run in runs), 4)
    return out


def plot(rows: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars: rural and urban mIoU per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    rural = [rows[n]["miou_rural"] for n in names]
    urban = [rows[n]["miou_urban"] for n in names]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(names)), 3.6), dpi=110)
    b1 = ax.bar([x - 0.2 for x in xs], rural, 0.4, label="rural (new domain)", color="#6b8e23")
    b2 = ax.bar([x + 0.2 for x in xs], urban, 0.4, label="urban (old domain)", color="#4682b4")
    for bars in (b1, b2):
        for bar in bars:
            ax.annotate(
                f"{bar.get_height():.3f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    labels = [f"{n}\n{rows[n]['pixels'] * 100:.0f}% px" for n in names]
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("mIoU")
    top = max(rural + urban)
    ax.set_ylim(0, min(1.0, top * 1.15 + 0.02))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


Pick = tuple[str, "np.ndarray", tuple[int, int, int, int], tuple[int, int]]


def _mined_pick(m: MinedFrame) -> Pick:
    return m.frame_id, m.crop, m.mining.box, m.frame_hw


def _box_pick(drive: Drive, index: int, box: tuple[int, int, int, int]) -> Pick:
    """Drive frame `index` with its crop at `box` (x, y, w, h)."""
    frame = drive.frame(index)
    x, y, w, h = box
    frame_hw = (int(frame.image.shape[0]), int(frame.image.shape[1]))
    return frame.frame_id, frame.image[y : y + h, x : x + w].copy(), box, frame_hw


def _window_picks(
    drive: Drive,
    chosen: Sequence[tuple[int, tuple[int, int]]],
    win: tuple[int, int],
    map_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    region_frac: float,
) -> list[Pick]:
    """(frame index, window (y, x) on a map of `map_hw`) pairs -> the frames' crops at the
    windows' frame-pixel boxes."""
    from models.mining import window_box

    return [
        _box_pick(drive, i, window_box(at, win, map_hw, frame_hw, region_frac)) for i, at in chosen
    ]


def _map_picks(
    drive: Drive,
    idx: Sequence[int],
    maps: Sequence[np.ndarray],
    frame_hw: tuple[int, int],
    region_frac: float,
    *,
    spread: bool,
) -> list[Pick]:
    """The frames `idx`, each with a window on its score map: spread over the 3x3 grid by
    ``spread_windows``, or else the map's hardest window (``mine``'s rule)."""
    from models.mining import hardest_window, window_size
    from models.selection import spread_windows

    map_hw = (int(maps[0].shape[0]), int(maps[0].shape[1]))
    win = window_size(map_hw, region_frac)
    spots = spread_windows(maps, win) if spread else [hardest_window(m, *win)[:2] for m in maps]
    chosen = list(zip(idx, spots, strict=True))
    return _window_picks(drive, chosen, win, map_hw, frame_hw, region_frac)


def stretches(indices: Sequence[int], length: float) -> int:
    """How many distinct stretches of road (blocks of `length` frames) a selection covers."""
    return len({int(i // length) for i in indices})


def summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures: share of full supervision's gain, margin over random, forgetting."""
    out: dict[str, Any] = {}
    base, ars = rows.get("base"), rows.get("ars")
    if base is None or ars is None:
        return out
    full = rows.get("full")
    gain = None
    if full is not None and full["miou_rural"] > base["miou_rural"]:
        gain = (ars["miou_rural"] - base["miou_rural"]) / (full["miou_rural"] - base["miou_rural"])
    out["ars_gain_over_full_gain"] = None if gain is None else round(gain, 4)
    if "random" in rows:
        out["ars_minus_random"] = round(ars["miou_rural"] - rows["random"]["miou_rural"], 4)
    out["urban_drop_ars"] = round(base["miou_urban"] - ars["miou_urban"], 4)
    for name in rows:
        if name in ("base", "ars", "full"):
            continue
        row = rows[name]
        out[f"{name}_minus_ars"] = round(row["miou_rural"] - ars["miou_rural"], 4)
        if name != "random" and "random" in rows:
            out[f"{name}_minus_random"] = round(row["miou_rural"] - rows["random"]["miou_rural"], 4)
        out[f"urban_drop_{name}"] = round(base["miou_urban"] - row["miou_urban"], 4)
        if gain is not None and full is not None:
            own = (row["miou_rural"] - base["miou_rural"]) / (
                full["miou_rural"] - base["miou_rural"]
            )
            out[f"{name}_gain_over_full_gain"] = round(own, 4)
    return out


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import numpy as np
    import torch

    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from models.coreset import grid_cells, select_kcenter
    from models.data import region_training_sample
    from models.mining import window_size
    from models.novelty import class_prototypes
    from models.selection import (
        GridSpreader,
        budget_count,
        random_window,
        select_diverse,
        select_random,
        select_top,
    )
    from simulator.drive import Drive
    from simulator.sets import heldout_set, source_replay_set

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    preset = QUICK if args.quick else FULL
    n = args.frames or preset["frames"]
    n_eval = args.eval_frames or preset["eval_frames"]
    rs, ss = settings.robot, settings.server
    ratio = args.ratio or rs.select_ratio
    # one frame per stretch of 1/ratio frames at most, while the hardest allow it
    min_gap = args.min_gap if args.min_gap is not None else 1.0 / ratio
    recipe = Recipe(
        iterations=args.iterations or ss.iterations,
        lr=args.lr or ss.lr,
        batch_size=args.batch_size or ss.batch_size,
        replay_share=ss.replay_share if args.replay_share is None else args.replay_share,
        replay_frames=ss.replay_frames if args.replay_frames is None else args.replay_frames,
        frozen_blocks=ss.frozen_blocks if args.frozen_blocks is None else args.frozen_blocks,
        seed=args.seed,
        repeats=max(1, args.repeats),
    )
    infer_hw = (rs.infer_height, rs.infer_width)
    train_hw = (ss.train_height, ss.train_width)
    wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    if wanted == ["all"]:
        wanted = [*ROWS[:-1], *ORACLE_ROWS, ROWS[-1]]
    unknown = set(wanted) - set(ROWS) - set(ORACLE_ROWS)
    if unknown or not wanted:
        raise SystemExit(f"rows must be among {ROWS + ORACLE_ROWS} or 'all', got {args.rows!r}")
    base, meta = load_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT)
    base.eval()

    # 0. The server's replay set (old-domain frames it holds labels for) and, for `novelty`,
    #    the old domain's class prototypes computed from it.
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    replay = source_replay_set(recipe.replay_frames, 0, train_hw) if recipe.replay_frames else []
    prototypes = None
    if "novelty" in wanted:
        proto_set = replay or source_replay_set(64, 0, train_hw)
        prototypes = class_prototypes(base, proto_set, len(meta.classes), infer_hw)
    timing["replay"] = round(time.perf_counter() - t0, 1)

    # 1. The drive, mined as the robot mines it; full frames kept at the training scale.
    drive = Drive("rural", seed=args.seed, width=rs.width, height=rs.height)
    full: list[LabeledSample] = []
    t0 = time.perf_counter()
    mined: list[MinedFrame] = []
    errors: list[np.ndarray] = []  # the base model's true errors, for the oracle rows only
    for i in range(n):
        frame = drive.frame(i)
        mined.append(
            mine_frame(base, i, frame.frame_id, frame.image, infer_hw, rs.region_frac, prototypes)
        )
        if set(ORACLE_ROWS) & set(wanted):
            errors.append(error_map(mined[-1].prediction, frame.label))
        if "full" in wanted:
            h, w = frame.label.shape
            full.append(
                region_training_sample(frame.image, frame.label, (0, 0, w, h), (w, h), train_hw)
            )
    timing["mine"] = round(time.perf_counter() - t0, 1)
    frame_hw = mined[0].frame_hw
    scores = [m.mining.score for m in mined]
    k = budget_count(ratio, n)
    win_hw = (mined[0].mining.box[3], mined[0].mining.box[2])

    # 2. The selections: same frame count k and window size for every 5% row.
    rng = np.random.default_rng(args.seed)
    picks: dict[str, list[Pick]] = {}
    if "ars" in wanted:
        picks["ars"] = [_mined_pick(mined[i]) for i in select_top(scores, ratio)]
    if "random" in wanted:
        # one window draw per frame, in frame order, after the frame draw (the rng's order)
        picks["random"] = [
            _box_pick(drive, i, random_window(frame_hw, win_hw, rng))
            for i in sorted(select_random(n, ratio, rng))
        ]
    # the robot's default frames: diverse, spread and spread_live differ only in the windows
    positions = [m.index for m in mined]  # where each frame is on the road
    diverse_idx = select_diverse(scores, ratio, positions, min_gap)
    if "diverse" in wanted:
        picks["diverse"] = [_mined_pick(mined[i]) for i in diverse_idx]
    if "spread" in wanted:
        maps = [mined[i].entropy for i in diverse_idx]
        picks["spread"] = _map_picks(
            drive, diverse_idx, maps, frame_hw, rs.region_frac, spread=True
        )
    if "spread_live" in wanted:
        spreader = GridSpreader()  # the robot's: one for the stream, fed in processing order
        map_hw = (int(mined[0].entropy.shape[0]), int(mined[0].entropy.shape[1]))
        win = window_size(map_hw, rs.region_frac)
        live = [spreader.choose(m.entropy, win) for m in mined]
        chosen = [(i, live[i]) for i in diverse_idx]
        picks["spread_live"] = _window_picks(drive, chosen, win, map_hw, frame_hw, rs.region_frac)
    if "novelty" in wanted:
        novelty_maps = [m.novelty for m in mined if m.novelty is not None]
        novelty_scores = [float(v.mean()) for v in novelty_maps]
        idx = select_diverse(novelty_scores, ratio, positions, min_gap)
        maps = [novelty_maps[i] for i in idx]
        picks["novelty"] = _map_picks(drive, idx, maps, frame_hw, rs.region_frac, spread=True)
    if "coreset" in wanted:
        feature_hw = mined[0].feature_hw
        cell_at, cell_win = grid_cells(feature_hw, rs.region_frac)
        chosen = [(i, cell_at[c]) for i, c in select_kcenter([m.cells for m in mined], ratio)]
        picks["coreset"] = _window_picks(
            drive, chosen, cell_win, feature_hw, frame_hw, rs.region_frac
        )
    if errors:
        error_idx = select_diverse([float(e.mean()) for e in errors], ratio, positions, min_gap)
        maps = [errors[i] for i in error_idx]
        if "oracle_hard" in wanted:
            picks["oracle_hard"] = _map_picks(
                drive, error_idx, maps, frame_hw, rs.region_frac, spread=False
            )
        if "oracle_spread" in wanted:
            picks["oracle_spread"] = _map_picks(
                drive, error_idx, maps, frame_hw, rs.region_frac, spread=True
            )
    index_of = {m.frame_id: m.index for m in mined}

    # 3. Held-out sets (seeds disjoint from the drive's world) and the server's replay set.
    t0 = time.perf_counter()
    evals = {
        "rural": heldout_set("rural", n_eval, args.seed, infer_hw),
        "urban": heldout_set("urban", n_eval, args.seed, infer_hw),
    }
    timing["sets"] = round(time.perf_counter() - t0, 1)

    # 4. Fine-tune a fresh copy of the base per row, evaluate it.
    rows: dict[str, dict[str, Any]] = {}
    for name in wanted:
        t0 = time.perf_counter()
        samples: list[LabeledSample]
        if name == "base":
            samples, boxes = [], []
        elif name == "full":
            samples, boxes = full, [(0, 0, frame_hw[1], frame_hw[0])] * n
        else:
            samples = region_samples(picks[name], train_hw)
            boxes = [p[2] for p in picks[name]]
        row: dict[str, Any] = _train_eval(base, samples, replay, recipe, train_hw, evals)
        row["pixels"] = round(pixel_fraction(boxes, frame_hw, n), 4)
        row["frames"] = len(boxes)
        if name in picks:
            row["stretches"] = stretches([index_of[p[0]] for p in picks[name]], 1 / ratio)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows[name] = row
        logger.info("label-efficiency seed %d: %s %s", args.seed, name, row)

    result: dict[str, Any] = {
        "seed": args.seed,
        "quick": bool(args.quick),
        "checkpoint": str(args.checkpoint or DEFAULT_CHECKPOINT.name),
        "version": meta.version,
        "drive": f"rural seed {args.seed}, {n} frames {frame_hw[1]}x{frame_hw[0]}",
        "eval_frames_per_domain": n_eval,
        "budget_pixels": round(ratio * rs.region_frac**2, 4),
        "selected_frames": k,
        "recipe": {
            "iterations": recipe.iterations,
            "lr": recipe.lr,
            "batch_size": recipe.batch_size,
            "replay_share": recipe.replay_share,
            "replay_frames": recipe.replay_frames,
            "frozen_blocks": recipe.frozen_blocks,
            "repeats": recipe.repeats,
            "min_gap": min_gap,
        },
        "rows": rows,
    }
    result.update(summary(rows))
    result["timing"] = timing
    result["seconds"] = round(time.perf_counter() - start, 1)
    path = (
        Path(args.plot) if args.plot else settings.data_dir / f"label_efficiency-s{args.seed}.png"
    )
    if {"base", "ars"} <= set(rows):
        title = f"label efficiency: rural drive seed {args.seed}, {n} frames"
        if set(ORACLE_ROWS) & set(rows):
            title += " (oracle rows read the ground truth)"
        plot(rows, path, title)
        result["plot"] = str(path)
    return result
