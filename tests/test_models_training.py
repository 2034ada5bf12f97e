"""Fine-tuning, cancellation, evaluation and the simulator-backed sets, on the tiny net."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.network import build_model, predict
from models.training import (
    LabeledSample,
    TrainProgress,
    class_weights,
    evaluate,
    finetune,
    trainable_parameters,
)
from simulator.sets import heldout_set, pool_set, source_replay_set

COLOURS = {0: (200, 40, 40), 1: (40, 200, 40), 2: (40, 40, 200)}


def _colour_samples(n: int, seed: int, hw: tuple[int, int] = (32, 48)) -> list[LabeledSample]:
    """A trivially learnable set: the class is the colour, split at a random column."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(3, size=2, replace=False)
        cut = int(rng.integers(8, hw[1] - 8))
        label = np.full(hw, a, dtype=np.uint8)
        label[:, cut:] = b
        image = np.zeros((*hw, 3), dtype=np.uint8)
        for cls, rgb in COLOURS.items():
            image[label == cls] = rgb
        out.append(LabeledSample(image=image, label=label))
    return out


def test_finetune_reduces_loss_and_mixes_replay() -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    new = _colour_samples(8, seed=1)
    # the region sample: only the left half is labelled, the rest is ignore
    for s in new:
        s.label[:, 24:] = 255
    replay = _colour_samples(8, seed=2)
    seen: list[TrainProgress] = []
    result = finetune(
        model,
        new,
        replay,
        iterations=40,
        lr=0.05,
        batch_size=4,
        size=(32, 48),
        progress=seen.append,
    )
    assert not result.cancelled and result.iterations_done == 40
    assert len(result.losses) == 40 and all(np.isfinite(result.losses))
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:5])
    assert [p.iteration for p in seen] == list(range(1, 41))
    peak = max(p.lr for p in seen)
    assert seen[0].lr < 0.1 * peak and peak == pytest.approx(0.05)  # warm-up to the base lr
    assert seen[-1].lr < 0.01  # then the poly decay
    assert seen[-1].eta_s == 0.0
    assert not model.training
    assert evaluate(model, _colour_samples(6, seed=9)) > 0.8


def test_finetune_cancel_returns_early_without_raising() -> None:
    model = build_model("tiny")
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    result = finetune(
        model, _colour_samples(4, 0), [], iterations=50, size=(32, 48), should_stop=stop
    )
    assert result.cancelled
    assert result.iterations_done == 3 and len(result.losses) == 3
    assert not model.training


def test_finetune_keeps_batchnorm_statistics() -> None:
    model = build_model("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    finetune(model, _colour_samples(4, 0), [], iterations=3, size=(32, 48))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_finetune_leaves_frozen_blocks_unchanged_and_trains_the_rest() -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    blocks = list(model.backbone.children())
    first = {k: v.clone() for k, v in blocks[0].state_dict().items()}
    last = {k: v.clone() for k, v in blocks[-1].state_dict().items()}
    head = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    finetune(
        model, _colour_samples(4, 0), [], iterations=3, lr=0.05, size=(32, 48), frozen_blocks=1
    )
    assert all(torch.equal(v, blocks[0].state_dict()[k]) for k, v in first.items())
    changed = [
        k
        for k, v in last.items()
        if v.is_floating_point()
        and not torch.equal(v, blocks[-1].state_dict()[k])
        and "running" not in k
    ]
    assert changed  # the last block learnt
    assert any(not torch.equal(v, model.classifier.state_dict()[k]) for k, v in head.items())
    assert all(p.requires_grad for p in model.parameters())  # restored for whoever comes next


def test_trainable_parameters_never_freezes_the_last_block() -> None:
    model = build_model("tiny")
    n_blocks = len(list(model.backbone.children()))
    everything = list(model.parameters())
    assert trainable_parameters(model, 0) == everything
    capped = trainable_parameters(model, 1000)  # more than the net has: all but the last
    last = list(list(model.backbone.children())[-1].parameters())
    assert n_blocks == 2 and {id(p) for p in last} <= {id(p) for p in capped}
    assert len(capped) < len(everything)
    assert [p.requires_grad for p in model.parameters()] == [
        any(p is q for q in capped) for p in model.parameters()
    ]
    model.requires_grad_(True)


def test_finetune_needs_samples() -> None:
    with pytest.raises(ValueError, match="at least one"):
        finetune(build_model("tiny"), [], _colour_samples(2, 0))


def test_evaluate_is_one_on_the_models_own_predictions() -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(3):
        img = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
        samples.append(LabeledSample(img, predict(model, img).mask))
    assert evaluate(model, samples) == pytest.approx(1.0)
    wrong = [LabeledSample(s.image, (s.label + 1) % 19) for s in samples]
    assert evaluate(model, wrong) == pytest.approx(0.0)


def test_class_weights_favour_rare_classes() -> None:
    label = np.zeros((10, 10), dtype=np.uint8)
    label[0, :2] = 5  # 2 pixels of pole
    label[1:, :] = 8
    w = class_weights([LabeledSample(np.zeros((10, 10, 3), np.uint8), label)], 19)
    assert w[5] > w[0] > w[8]
    assert float(w.min()) >= 0.25 and float(w.max()) <= 5.0


def test_simulator_sets_are_resized_and_disjoint() -> None:
    urban = heldout_set("urban", 2, seed=0, size=(60, 80))
    replay = source_replay_set(2, seed=0, size=(60, 80))
    assert urban[0].image.shape == (60, 80, 3) and urban[0].label.shape == (60, 80)
    assert set(np.unique(urban[0].label).tolist()) <= {*range(19), 255}
    assert not np.array_equal(urban[0].image, replay[0].image)
    with pytest.raises(ValueError, match="domain"):
        heldout_set("desert", 1, 0, (60, 80))


def test_pretrain_stops_on_its_time_budget() -> None:
    from models.training import pretrain

    seen: list[TrainProgress] = []
    model = pretrain(
        "tiny",
        steps=10_000,
        batch_size=2,
        size=(48, 64),
        pool_samples=pool_set(2, 0, (48, 64)),
        time_budget_s=1.5,
        progress=seen.append,
    )
    assert 0 < len(seen) < 10_000
    assert seen[-1].elapsed_s < 3.0
    assert seen[-1].lr < 0.2 * 2e-3  # the schedule decayed with time, not steps
    assert not model.training


def test_shared_loss_gives_each_half_its_share_whatever_its_labelled_pixels() -> None:
    """A quarter-frame region beside a full replay frame: summed over pixels the region would
    weigh a fifth; shared, the new half weighs what its share says."""
    from models.training import _loss, _shared_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0] = 255
    target[0, :4, :4] = torch.randint(0, 3, (4, 4))  # the region: 16 of 64 pixels labelled
    new, old = _loss(logits[:1], target[:1], None), _loss(logits[1:], target[1:], None)
    shared = _shared_loss(logits, target, n_new=1, new_share=0.5)
    assert shared == pytest.approx(0.5 * float(new) + 0.5 * float(old), rel=1e-6)
    summed = _loss(logits, target, None)  # 16 new pixels against 64 replay pixels
    assert summed == pytest.approx((16 * float(new) + 64 * float(old)) / 80, rel=1e-6)
    # nothing to share: a batch of one kind is the plain loss
    assert _shared_loss(logits, target, n_new=2, new_share=0.5) == pytest.approx(float(summed))


def test_finetune_with_shared_loss_learns_from_regions_beside_replay() -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    regions = _colour_samples(6, seed=3)
    for s in regions:  # a quarter of each labelled, as the robot's regions
        h, w = s.label.shape
        keep = np.full_like(s.label, 255)
        keep[: h // 2, : w // 2] = s.label[: h // 2, : w // 2]
        s.label[:] = keep
    replay = _colour_samples(6, seed=4)
    result = finetune(
        model, regions, replay, iterations=30, lr=0.05, batch_size=4, size=(32, 48),
        shared_loss=True,
    )  # fmt: skip
    assert result.iterations_done == 30 and all(np.isfinite(result.losses))
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:5])
    assert evaluate(model, _colour_samples(6, seed=9)) > 0.8


def test_finetune_trains_channels_last_and_leaves_the_usual_layout() -> None:
    """Inference, ONNX export and checkpoints see contiguous weights after a fine-tune."""
    model = build_model("tiny")
    finetune(model, _colour_samples(4, 0), [], iterations=2, size=(32, 48))
    convs = [p for p in model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous() for p in convs)


def test_distill_loss_is_zero_for_the_teachers_own_answers_and_grows_as_they_part() -> None:
    from models.training import _distill_loss

    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 6, 6)
    assert float(_distill_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    near = _distill_loss(teacher + 0.1 * torch.randn_like(teacher), teacher)
    far = _distill_loss(torch.randn_like(teacher), teacher)
    assert 0 < float(near) < float(far)


def test_distilling_the_replay_frames_holds_the_teachers_answers_on_them() -> None:
    """New labels that contradict the old answers (every colour's class moved on) beside
    replay frames with no labels: distilled to the teacher, they hold the teacher's answers on
    old frames the model never trained on; without, nothing does."""
    import copy

    torch.manual_seed(0)
    teacher = build_model("tiny")
    finetune(teacher, _colour_samples(12, seed=5), [], iterations=60, lr=0.05, size=(32, 48))
    old_frames = _colour_samples(8, seed=6)
    contradict = _colour_samples(8, seed=7)
    for s in contradict:
        s.label[:] = (s.label + 1) % 3
    replay = [LabeledSample(image=s.image, label=np.full_like(s.label, 255)) for s in
              _colour_samples(8, seed=8)]  # fmt: skip

    def agreement(distill_weight: float) -> float:
        student = copy.deepcopy(teacher)
        finetune(
            student, contradict, replay, iterations=30, lr=0.05, size=(32, 48),
            shared_loss=True, teacher=teacher, distill_weight=distill_weight, seed=1,
        )  # fmt: skip
        same = [
            (predict(student, s.image).mask == predict(teacher, s.image).mask).mean()
            for s in old_frames
        ]
        return float(np.mean(same))

    assert agreement(2.0) > agreement(0.0) + 0.1  # 0.39 against 0.17 here


def test_replay_frames_carry_the_teachers_answers_through_their_flip() -> None:
    """The teacher's answers are computed once per frame, and a drawn frame carries them,
    flipped when the frame is: the network's own output, without a forward pass a step."""
    import torch.nn.functional as F

    from models.training import _Pool, _teacher_answers

    torch.manual_seed(0)
    teacher = build_model("tiny").eval()
    samples = _colour_samples(3, seed=11)  # 32x48, the crop below: no crop, only flips
    pool = _Pool(samples)
    pool.answers = _teacher_answers(teacher, pool, torch.device("cpu"), batch=2)
    with torch.no_grad():
        full = [teacher(pool.normalised(s)[0][None])[0] for s in samples]
    flips = set()
    for img, lbl in pool.draw(12, np.random.default_rng(0), (32, 48), (1.0, 1.0)):
        assert img.shape[0] == 3 + full[0].shape[0]
        (i,) = [j for j, s in enumerate(samples) if
                torch.equal(lbl, pool.normalised(s)[1]) or
                torch.equal(lbl, pool.normalised(s)[1].flip(-1))]  # fmt: skip
        flipped = not torch.equal(img[:3], pool.normalised(samples[i])[0])
        want = full[i].flip(-1) if flipped else full[i]
        assert F.mse_loss(img[3:], want) < 1e-10
        flips.add(flipped)
    assert flips == {True, False}


def test_colour_cast_is_seeded_keeps_brightness_and_is_off_at_zero() -> None:
    from models.transforms import colour_cast

    img = torch.rand(3, 16, 24) * 0.5  # no channel near 1, so no clamping
    assert colour_cast(img, np.random.default_rng(0), 0.0) is img
    a = colour_cast(img, np.random.default_rng(1), 1.0)
    b = colour_cast(img, np.random.default_rng(1), 1.0)
    assert torch.equal(a, b) and not torch.equal(a, img)  # same draw, same cast
    gains = a.mean((1, 2)) / img.mean((1, 2))
    assert float(gains.min()) >= 0.7 / 1.3 - 1e-6 and float(gains.max()) <= 1.3 / 0.7 + 1e-6
    assert float(gains.max() - gains.min()) > 1e-3  # the channels moved apart: a cast
    assert float(a.mean()) == pytest.approx(float(img.mean()), rel=0.15)


def test_finetune_with_a_colour_cast_learns_and_leaves_replay_frames_as_they_are() -> None:
    from models.training import _Pool

    new, replay = _colour_samples(6, seed=3), _colour_samples(6, seed=4)
    pool = _Pool(replay)
    x, _ = pool.normalised(replay[0], np.random.default_rng(0))
    assert torch.equal(x, pool.normalised(replay[0])[0])  # no cast on a replay pool
    cast_pool = _Pool(new, cast=1.0)
    y, _ = cast_pool.normalised(new[0], np.random.default_rng(0))
    assert not torch.equal(y, cast_pool.normalised(new[0])[0])  # drawn: cast
    torch.manual_seed(0)
    model = build_model("tiny")
    result = finetune(
        model, new, replay, iterations=30, lr=0.05, batch_size=4, size=(32, 48),
        shared_loss=True, colour_cast=1.0,
    )  # fmt: skip
    assert result.iterations_done == 30 and all(np.isfinite(result.losses))
    assert np.mean(result.losses[-5:]) < 0.5 * np.mean(result.losses[:5])


def test_colour_cast_refuses_a_strength_that_would_flip_a_channel() -> None:
    from models.transforms import colour_cast

    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        colour_cast(torch.rand(3, 4, 4), np.random.default_rng(0), 3.5)
