"""Fine-tuning (the paper's recipe), pretraining from scratch and evaluation.

Everything here blocks: callers run it in a worker thread (`asyncio.to_thread`). Cancellation
is cooperative through `should_stop`, checked before every iteration.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.classes import IGNORE
from common.samples import LabeledSample
from models.data import INFER_HW
from models.metrics import confusion_matrix, miou
from models.network import MEAN, STD, SegNet, build_model
from models.seeding import seed_everything
from models.transforms import colour_cast, random_pair, to_tensors

__all__ = [
    "LabeledSample",
    "TrainProgress",
    "TrainResult",
    "class_weights",
    "confusion",
    "evaluate",
    "finetune",
    "pretrain",
    "trainable_parameters",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainProgress:
    """One iteration done: for progress bars and progress events."""

    iteration: int
    iterations: int
    loss: float
    lr: float
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class TrainResult:
    """Loss per iteration done; cancelled=True when should_stop ended the run early."""

    losses: list[float]
    iterations_done: int
    cancelled: bool
    seconds: float


ProgressFn = Callable[[TrainProgress], None]
WARMUP_SHARE = 0.1  # fine-tuning: share of iterations with a linearly rising lr
MAX_GRAD_NORM = 5.0  # fine-tuning: gradient norm clip
StopFn = Callable[[], bool]


class _Pool:
    """Samples as tensors (uint8 in memory), drawn with paired augmentation into batches.

    With `answers` (a teacher's low-resolution logits per sample, ``_teacher_answers``) each
    drawn image carries them, upsampled, as channels after its 3 colour channels, so the crop,
    the scale and the flip that the image gets, its answers get too."""

    def __init__(
        self,
        samples: Sequence[LabeledSample],
        answers: Sequence[torch.Tensor] | None = None,
        cast: float = 0.0,
    ) -> None:
        # converted on draw, not up front: `samples` may be a lazy sequence (the server's
        # regions, decoded from disk on access) so a job's memory does not grow with the data
        self.items = samples
        self.answers = answers
        self.cast = cast  # colour cast strength on draw (0: none)
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def normalised(
        self, sample: LabeledSample, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sample as a normalised float image and a long mask; with `rng`, cast as drawn."""
        img, lbl = to_tensors(sample.image, sample.label)
        x = img.float() / 255.0
        if rng is not None and self.cast > 0:
            x = colour_cast(x, rng, self.cast)
        return (x - self.mean) / self.std, lbl.long()

    def draw(
        self,
        n: int,
        rng: np.random.Generator,
        crop: tuple[int, int],
        scale: tuple[float, float],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for i in rng.integers(0, len(self.items), size=n):
            x, lbl = self.normalised(self.items[int(i)], rng)
            if self.answers is not None:
                low = self.answers[int(i)].float()[None]
                up = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
                x = torch.cat([x, up[0]])
            out.append(random_pair(x, lbl, crop, rng, scale=scale))
        return out


def _teacher_answers(
    teacher: SegNet, pool: _Pool, device: torch.device, batch: int = 8
) -> list[torch.Tensor]:
    """The teacher's low-resolution logits for every sample of `pool`, computed once per
    fine-tune (64 replay frames, against two frames a step for hundreds of steps: with a
    forward pass a step distillation made a bench round about 25 % dearer, answering once
    12-17 %; the rest is the loss at full resolution). A drawn frame carries its whole-frame
    answers cropped and flipped as it is, which is not quite the teacher's answer on the
    flipped frame itself, and as good a target."""
    teacher.eval()
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(pool.items), batch):
            stop = min(start + batch, len(pool.items))
            xs = [pool.normalised(pool.items[j])[0] for j in range(start, stop)]
            if len({tuple(x.shape) for x in xs}) == 1:
                out += list(teacher.forward_lowres(torch.stack(xs).to(device)).cpu())
            else:  # frames of different sizes: one at a time
                out += [teacher.forward_lowres(x[None].to(device))[0].cpu() for x in xs]
    return out


def _stack(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy over labelled pixels (255 ignored); zero, not NaN, when none are labelled."""
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE, reduction="sum")
    valid = target != IGNORE
    denom = weight[target[valid]].sum() if weight is not None else valid.sum()
    return total / denom.clamp(min=1e-6)


def _shared_loss(
    logits: torch.Tensor, target: torch.Tensor, n_new: int, new_share: float
) -> torch.Tensor:
    """The new-domain samples (the first ``n_new``) and the replay samples each take their
    share of the loss, whatever the number of labelled pixels in each: summed over pixels, a
    batch of two quarter-frame regions and two replay frames would give the new domain a fifth
    of the gradient, and the scarcer the labels the slower they would be learnt."""
    if n_new <= 0 or n_new >= logits.shape[0]:
        return _loss(logits, target, None)
    new = _loss(logits[:n_new], target[:n_new], None)
    old = _loss(logits[n_new:], target[n_new:], None)
    return new_share * new + (1.0 - new_share) * old


def _distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per pixel, averaged over pixels: how far the student's class
    distribution has moved from the teacher's, on every pixel, labelled or not."""
    log_p = F.log_softmax(student, dim=1)
    q = F.softmax(teacher, dim=1)
    return (q * (torch.log(q.clamp(min=1e-8)) - log_p)).sum(dim=1).mean()


def _freeze_bn(model: nn.Module) -> None:
    """Keep BatchNorm statistics fixed: small, mostly-ignore batches would corrupt them."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def trainable_parameters(model: SegNet, frozen_blocks: int) -> list[nn.Parameter]:
    """The parameters fine-tuning updates: all but the backbone's first `frozen_blocks` blocks.

    At most all blocks but the last are frozen, so every network keeps something to learn
    (the tiny test net has two blocks). Frozen parameters get requires_grad False: no
    gradient is computed for them, so freezing also saves backward time.
    """
    blocks = list(model.backbone.children())
    frozen = {
        id(p) for b in blocks[: min(max(0, frozen_blocks), len(blocks) - 1)] for p in b.parameters()
    }
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    return [p for p in model.parameters() if p.requires_grad]


def finetune(
    model: SegNet,
    samples: Sequence[LabeledSample],
    replay: Sequence[LabeledSample],
    *,
    iterations: int = 100,
    lr: float = 2.5e-4,
    batch_size: int = 4,
    replay_share: float = 0.5,
    frozen_blocks: int = 0,
    seed: int = 0,
    size: tuple[int, int] = INFER_HW,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    pseudo: Sequence[LabeledSample] = (),
    pseudo_share: float = 0.5,
    shared_loss: bool = False,
    teacher: SegNet | None = None,
    distill_weight: float = 0.0,
    colour_cast: float = 0.0,
) -> TrainResult:
    """Fine-tune `model` in place: SGD momentum 0.9, new regions mixed with replay.

    The lr warms up linearly over the first WARMUP_SHARE of the iterations, then decays (poly),
    and gradients are clipped to MAX_GRAD_NORM: the first steps on a new domain have gradient
    norms of 10-28 (2-5 later), and without both a run at lr 5e-3 could diverge.

    Each batch holds round(batch_size * replay_share) replay samples (when any are given) and
    the rest new-domain samples. Samples are cropped/padded to `size` with random flips.
    BatchNorm statistics stay frozen, and so do the backbone's first `frozen_blocks` blocks
    (`trainable_parameters`): with every layer free, the same 30 regions gave rural mIoU from
    0.15 to 0.26 depending on the training seed alone; with the stem and the stride-8 stage
    fixed (7 blocks of MobileNetV3-Large) two training seeds mostly land within 0.01 of each
    other (measured on the former label-efficiency bench, now `ars bench adaptation`). The
    server fixes 5 (``server.frozen_blocks``): with the replay distilled, the last two
    stride-8 blocks adapt without costing the old domain (docs/adaptation.md).
    With `pseudo` (unlabeled new-domain frames with the model's confident pixels,
    ``models.adaptation.pseudo_labels``), round(new slots * pseudo_share) of each batch's
    new-domain slots, at least one, draw from them instead; with no labelled samples at all
    every new-domain slot does (the label-free row).
    With `teacher` (the shipped model) and `distill_weight` > 0, the replay samples' loss
    gains ``distill_weight`` x KL(teacher || model) over all their pixels: the labels say what
    the old domain *is*, the teacher what the robot used to *answer*, and holding the answers
    is what keeps the old domain's mIoU (``models.adaptation.bound_forgetting``).
    With `colour_cast` > 0 each labelled new-domain sample gets a random colour cast each time
    it is drawn (``models.transforms.colour_cast``); replay frames do not, so they stay what
    the teacher answered.
    Returns cancelled=True (no exception) when stopped.
    """
    if not samples and not pseudo:
        raise ValueError("finetune needs at least one labelled sample")
    rng = seed_everything(seed)
    new_pool, old_pool = _Pool(samples, cast=colour_cast), _Pool(replay)
    pseudo_pool = _Pool(pseudo)
    n_old = min(batch_size - 1, round(batch_size * replay_share)) if replay else 0
    n_new = batch_size - n_old
    n_pseudo = 0
    if pseudo:
        n_pseudo = n_new if not samples else min(n_new - 1, max(1, round(n_new * pseudo_share)))
        n_new -= n_pseudo
    params = trainable_parameters(model, frozen_blocks)
    device = next(model.parameters()).device  # CPU or CUDA: wherever the caller put the model
    distill = teacher is not None and distill_weight > 0 and n_old > 0
    if distill:
        assert teacher is not None
        old_pool.answers = _teacher_answers(teacher, old_pool, device)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    losses: list[float] = []
    start = time.monotonic()
    cancelled = False
    model.train()
    _freeze_bn(model)
    # channels-last convolutions: 0.52-0.61 s an iteration on one CPU thread against 0.73
    # (batch 4 at 240x320, 7 frozen blocks); the model goes back to the usual layout after
    model.to(memory_format=torch.channels_last)
    try:
        for i in range(iterations):
            if should_stop is not None and should_stop():
                cancelled = True
                break
            cur_lr = _warm_poly(lr, i / max(1, iterations), warm=WARMUP_SHARE)
            for group in opt.param_groups:
                group["lr"] = cur_lr
            pairs = new_pool.draw(n_new, rng, size, (1.0, 1.0)) if n_new else []
            pairs += pseudo_pool.draw(n_pseudo, rng, size, (1.0, 1.0)) if n_pseudo else []
            old = old_pool.draw(n_old, rng, size, (1.0, 1.0)) if n_old else []
            held = torch.stack([img[3:] for img, _ in old]) if distill else None
            pairs += [(img[:3], lbl) for img, lbl in old]
            x, y = _stack(pairs)
            logits, target = model(x.to(device)), y.to(device)
            if shared_loss and n_old:
                loss = _shared_loss(logits, target, n_new + n_pseudo, 1.0 - n_old / batch_size)
            else:
                loss = _loss(logits, target, None)
            if held is not None:
                kd = _distill_loss(logits[-n_old:], held.to(device))
                loss = loss + distill_weight * (n_old / batch_size) * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            opt.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                elapsed = time.monotonic() - start
                progress(
                    TrainProgress(
                        iteration=i + 1,
                        iterations=iterations,
                        loss=losses[-1],
                        lr=cur_lr,
                        elapsed_s=elapsed,
                        eta_s=elapsed / (i + 1) * (iterations - i - 1),
                    )
                )
    finally:
        model.eval()
        model.requires_grad_(True)
        model.to(memory_format=torch.contiguous_format)
    seconds = time.monotonic() - start
    logger.info(
        "finetune: %d/%d iterations in %.1f s (cancelled=%s)",
        len(losses),
        iterations,
        seconds,
        cancelled,
    )
    return TrainResult(losses, len(losses), cancelled, seconds)


def evaluate(
    model: SegNet,
    samples: Sequence[LabeledSample],
    size: tuple[int, int] | None = None,
    batch_size: int = 8,
) -> float:
    """mIoU (0..1, nanmean over classes present) of `model` on labelled samples."""
    return miou(confusion(model, samples, size, batch_size))


def confusion(
    model: SegNet,
    samples: Sequence[LabeledSample],
    size: tuple[int, int] | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Confusion matrix (rows truth, columns prediction) of `model` on labelled samples.

    Inference at `size` (or each sample's own size); predictions are upsampled back to the
    label's size before the confusion matrix, as the robot's masks are.
    """
    num_classes = int(getattr(model.classifier, "low_classifier").out_channels)  # noqa: B009
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    try:
        with torch.inference_mode():
            for b in range(0, len(samples), batch_size):
                chunk = samples[b : b + batch_size]
                shapes = {s.image.shape for s in chunk}
                groups = [chunk] if len(shapes) == 1 else [[s] for s in chunk]
                for group in groups:
                    h, w = group[0].label.shape
                    x = torch.from_numpy(np.stack([s.image for s in group])).permute(0, 3, 1, 2)
                    x = (x.float() / 255.0 - mean) / std
                    if size is not None and tuple(x.shape[-2:]) != tuple(size):
                        x = F.interpolate(
                            x, size=size, mode="bilinear", align_corners=False, antialias=True
                        )
                    low = model.forward_lowres(x.to(device))
                    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
                    pred = up.argmax(1).cpu().numpy()
                    for p, s in zip(pred, group, strict=True):
                        conf += confusion_matrix(p, s.label, num_classes, IGNORE)
    finally:
        model.train(was_training)
    return conf


def class_weights(
    samples: Sequence[LabeledSample], num_classes: int, power: float = 0.5
) -> torch.Tensor:
    """(median frequency / frequency) ** power, clipped to [0.25, 5]; helps thin classes."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for s in samples:
        lbl = s.label[s.label != IGNORE]
        counts += np.bincount(lbl.ravel(), minlength=num_classes)[:num_classes]
    freq = counts / max(1.0, counts.sum())
    present = freq > 0
    w = np.ones(num_classes)
    if present.any():
        w[present] = (np.median(freq[present]) / freq[present]) ** power
    return torch.tensor(np.clip(w, 0.25, 5.0), dtype=torch.float32)


def _warm_poly(base_lr: float, frac: float, warm: float = 0.05) -> float:
    """Linear warm-up over the first `warm` of training, then poly decay to zero."""
    if frac < warm:
        return base_lr * max(frac / warm, 0.01)
    return float(base_lr * (1.0 - min(1.0, (frac - warm) / (1.0 - warm))) ** 0.9)


def pretrain(
    arch: str = "lraspp_mbv3_large",
    *,
    pool_samples: Sequence[LabeledSample],
    steps: int = 2000,
    batch_size: int = 12,
    lr: float = 2e-3,
    size: tuple[int, int] = INFER_HW,
    seed: int = 0,
    progress: ProgressFn | None = None,
    crop: tuple[int, int] | None = None,
    time_budget_s: float | None = None,
    should_stop: StopFn | None = None,
    init: SegNet | None = None,
) -> SegNet:
    """Train a network from scratch on source-domain frames (urban simulator frames).

    The pool of frames (at the inference `size`, rendered once by the caller) is reused with
    random scale (0.75-1.5), crop and flip. AdamW with warm-up then poly decay, and
    sqrt-median-frequency class weights so thin classes (poles, signs, people) are learnt.
    With `time_budget_s` the schedule runs on max(step fraction, time fraction), so on a
    shared, unevenly loaded CPU the run still ends on time with a fully decayed lr.
    `init` continues training a given model (of `arch`) instead of a fresh one.
    """
    rng = seed_everything(seed)
    model = init if init is not None else build_model(arch)
    num_classes = int(getattr(model.classifier, "low_classifier").out_channels)  # noqa: B009
    weight = class_weights(pool_samples, num_classes)
    pool = _Pool(pool_samples)
    crop_hw = crop or size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    start = time.monotonic()
    for i in range(steps):
        elapsed = time.monotonic() - start
        frac = i / steps
        if time_budget_s:
            frac = max(frac, elapsed / time_budget_s)
        if frac >= 1.0 or (should_stop is not None and should_stop()):
            logger.info("pretrain: stopped after %d of %d steps, %.0f s", i, steps, elapsed)
            break
        cur_lr = _warm_poly(lr, frac)
        for group in opt.param_groups:
            group["lr"] = cur_lr
        x, y = _stack(pool.draw(batch_size, rng, crop_hw, (0.75, 1.5)))
        loss = _loss(model(x), y, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"pretrain loss became {value} at step {i}")
        if progress is not None:
            elapsed = time.monotonic() - start
            eta = elapsed / max(frac, 1e-9) - elapsed if frac > 0 else 0.0
            progress(TrainProgress(i + 1, steps, value, cur_lr, elapsed, eta))
    model.eval()
    return model
