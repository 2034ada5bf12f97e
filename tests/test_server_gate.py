"""The evaluation gate's rules: held-out regions, the urban tolerance, the rural fallback."""

from __future__ import annotations

from server_agent.gate import is_held_out, judge


def test_held_out_share_is_stable_and_about_one_in_n() -> None:
    ids = [f"r{i}" for i in range(1000)]
    held = [r for r in ids if is_held_out(r, 5, len(ids))]
    assert 150 <= len(held) <= 250
    assert held == [r for r in ids if is_held_out(r, 5, len(ids))]  # same ids every job
    assert not any(is_held_out(r, 5, 4) for r in ids)  # too few labeled: none held out
    assert not any(is_held_out(r, 0, len(ids)) for r in ids)  # disabled


def test_worse_on_held_out_regions_is_refused_with_both_figures() -> None:
    current = {"miou_heldout": 0.40, "miou_urban": 0.70, "miou_rural": 0.20}
    v = judge({"miou_heldout": 0.35, "miou_urban": 0.70, "miou_rural": 0.90}, current, 0.02)
    assert v.worse and "held-out regions mIoU 0.3500" in v.reasons[0] and "0.4000" in v.reasons[0]
    assert v.figures["candidate_miou_heldout"] == 0.35
    assert v.figures["current_miou_heldout"] == 0.40
    assert "candidate_miou_rural" not in v.figures  # the held-out regions decide, not rural


def test_urban_drop_within_tolerance_passes_beyond_is_refused() -> None:
    current = {"miou_heldout": 0.40, "miou_urban": 0.70}
    assert not judge({"miou_heldout": 0.50, "miou_urban": 0.685}, current, 0.02).worse
    v = judge({"miou_heldout": 0.50, "miou_urban": 0.67}, current, 0.02)
    assert v.worse and v.reasons == [
        "urban mIoU 0.6700, more than 0.02 below the running model's 0.7000"
    ]


def test_without_held_out_regions_rural_frames_decide() -> None:
    v = judge({"miou_rural": 0.2, "miou_urban": 0.5}, {"miou_rural": 0.35, "miou_urban": 0.5}, 0.02)
    assert v.worse and v.figures["candidate_miou_rural"] == 0.2
    assert not judge({"miou_rural": 0.4}, {"miou_rural": 0.35}, 0.02).worse


def test_urban_tolerance_counts_from_the_base_model_when_the_job_recorded_it() -> None:
    """Rounds that each lose a little must not add up past the budget: with ``urban_base``
    the tolerance is counted from the base model, not from the running one."""
    current = {"miou_heldout": 0.40, "miou_urban": 0.685}  # already 0.015 below the base
    candidate = {"miou_heldout": 0.50, "miou_urban": 0.675, "urban_base": 0.70}
    assert not judge(candidate | {"urban_base": None}, current, 0.02).worse  # per round: passes
    v = judge(candidate, current, 0.02)
    assert v.worse and v.reasons == [
        "urban mIoU 0.6750, more than 0.02 below the base model's 0.7000"
    ]
    assert v.figures["base_miou_urban"] == 0.70


def test_new_domain_tolerance_lets_noise_pass_and_refuses_beyond_it() -> None:
    """A few held-out regions score noisily: within ``server.gate_heldout_drop`` of the running
    model the candidate passes; beyond it the reason names the tolerance."""
    current = {"miou_heldout": 0.40, "miou_urban": 0.70}
    assert not judge({"miou_heldout": 0.395, "miou_urban": 0.70}, current, 0.02, 0.01).worse
    v = judge({"miou_heldout": 0.38, "miou_urban": 0.70}, current, 0.02, 0.01)
    assert v.worse and v.reasons == [
        "held-out regions mIoU 0.3800, more than 0.01 below the running model's 0.4000"
    ]
    assert judge({"miou_heldout": 0.395, "miou_urban": 0.70}, current, 0.02).worse  # default 0
