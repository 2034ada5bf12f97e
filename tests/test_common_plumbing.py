"""The agents' shared plumbing: command de-duplication and topic routing."""

from __future__ import annotations

from common.seen import SeenIds


def test_seen_ids_acts_once_and_forgets_the_oldest() -> None:
    seen = SeenIds(2)
    assert seen.first_time("a") and seen.first_time("b")
    assert not seen.first_time("a")  # a QoS 1 redelivery
    assert seen.first_time("c")  # "a" is now the oldest of three and forgotten
    assert seen.first_time("a") and not seen.first_time("c")
