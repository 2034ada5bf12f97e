"""What a fine-tune's mIoU figures are measured on, in the order that answers a person's question
("how much better is the robot where it drives?"), for the ``done`` event, the CLI and the page.

The held-out regions are labelled regions of this robot's own drive that the job did not train
on: the figure that answers the question. The rural and urban frames are fixed simulator sets
(not the robot's route); urban is the base model's domain, kept to show forgetting. A rural
figure can fall while the held-out one rises, so each figure names its set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (metrics key, short name, what it is measured on; {n} is the number of samples)
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("miou_heldout", "held-out regions",
     "{n} labelled regions of this robot's drive, not trained on"),
    ("miou_regions", "labelled regions", "all {n} labelled regions of this robot, trained on"),
    ("miou_rural", "rural frames", "{n} fixed simulator rural frames, not the robot's route"),
    ("miou_urban", "urban frames", "{n} fixed simulator urban frames, the base model's domain"),
)  # fmt: skip


def figures(
    before: Mapping[str, float], after: Mapping[str, float], counts: Mapping[str, int]
) -> list[dict[str, Any]]:
    """One row per figure present after the job: key, name, evaluated_on, n, before, after."""
    rows = []
    for key, name, on in FIGURES:
        if key not in after:
            continue
        n = int(counts.get(key, 0))
        rows.append(
            {
                "key": key,
                "name": name,
                "evaluated_on": on.format(n=n),
                "n": n,
                "before": before.get(key),
                "after": after[key],
            }
        )
    return rows


def headline(
    version: str, seconds: float, rows: list[dict[str, Any]], blend: float | None = None
) -> str:
    """'new model V in S s: held-out regions mIoU 0.495 -> 0.572 (8 labelled ...); ...', and
    what the forgetting guard kept of the fine-tune's change when it held some back."""

    def one(row: dict[str, Any], detail: bool) -> str:
        b = row["before"]
        text = f"{row['name']} mIoU {'?' if b is None else f'{b:.3f}'} -> {row['after']:.3f}"
        return f"{text} ({row['evaluated_on']})" if detail else text

    parts = [one(row, i == 0) for i, row in enumerate(rows)]
    if blend is not None and blend < 1.0:
        kept = f"{blend * 100:g} %"  # the share as kept: 62.5 % is never shown as 62 %
        parts.append(f"forgetting guard: kept {kept} of the fine-tune's change (urban budget)")
    return f"new model {version} in {seconds:.0f} s: " + "; ".join(parts)
