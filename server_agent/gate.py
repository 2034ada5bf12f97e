"""The evaluation gate: is a fine-tuned candidate worse than the model the robot runs?

Both are measured in the same fine-tune job on the same data (``VersionRow.metrics`` and
``metrics_before``; the job's parent is the robot's running model), on what a real server has:

- ``miou_heldout``: labeled regions held out of training (``is_held_out``), the new domain;
- ``miou_urban``: old-domain frames, the forgetting check, with a tolerance
  (``server.gate_urban_drop``), since a small old-domain cost is the price of adapting. The
  tolerance is counted from the base model's figure on the same frames (``urban_base``, which
  the job's forgetting guard records), so it is one budget for every round together, not one
  per round that adds up; a candidate without it is held to the running model's figure.

When a job had too few regions to hold any out, ``miou_rural`` (the simulator's held-out rural
frames) stands in for the new domain. Pure functions: the publisher sends the verdict as an event.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


def is_held_out(region_id: str, every: int, labeled: int) -> bool:
    """One labeled region in `every` (by a hash of its id, so stable across jobs) is kept for
    evaluation, once at least `every` regions are labeled; `every` 0 disables it."""
    if every <= 1 or labeled < every:
        return False
    digest = hashlib.sha256(region_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % every == 0


@dataclass(frozen=True)
class GateVerdict:
    """Which figures were compared, the reasons a candidate is worse (empty: it passes)."""

    figures: dict[str, float | None] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def worse(self) -> bool:
        return bool(self.reasons)


def judge(
    candidate: dict[str, float],
    current: dict[str, float],
    urban_drop: float,
    new_domain_drop: float = 0.0,
) -> GateVerdict:
    """Compare the candidate's metrics with the running model's on the same data; the new
    domain's figure may fall by `new_domain_drop` (``server.gate_heldout_drop``), the urban one
    by `urban_drop` from the base model's."""
    figures: dict[str, float | None] = {}
    reasons: list[str] = []
    new_domain = "miou_heldout" if "miou_heldout" in candidate else "miou_rural"
    label = "held-out regions" if new_domain == "miou_heldout" else "rural"
    cand, cur = candidate.get(new_domain), current.get(new_domain)
    figures[f"candidate_{new_domain}"], figures[f"current_{new_domain}"] = cand, cur
    if cand is not None and cur is not None and cand < cur - new_domain_drop:
        by = f"more than {new_domain_drop:.2f} below" if new_domain_drop > 0 else "below"
        reasons.append(f"{label} mIoU {cand:.4f}, {by} the running model's {cur:.4f}")
    cand_u, cur_u = candidate.get("miou_urban"), current.get("miou_urban")
    figures["candidate_miou_urban"], figures["current_miou_urban"] = cand_u, cur_u
    ref_u, whose = cur_u, "running"
    if candidate.get("urban_base") is not None:
        ref_u, whose = candidate["urban_base"], "base"
        figures["base_miou_urban"] = ref_u
    if cand_u is not None and ref_u is not None and cand_u < ref_u - urban_drop:
        reasons.append(
            f"urban mIoU {cand_u:.4f}, more than {urban_drop:.2f} below the {whose} "
            f"model's {ref_u:.4f}"
        )
    return GateVerdict(figures, reasons)
