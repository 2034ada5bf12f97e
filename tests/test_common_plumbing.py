"""The agents' shared plumbing: command de-duplication and topic routing."""

from __future__ import annotations

from common.router import Router, topic_matches
from common.seen import SeenIds


def test_seen_ids_acts_once_and_forgets_the_oldest() -> None:
    seen = SeenIds(2)
    assert seen.first_time("a") and seen.first_time("b")
    assert not seen.first_time("a")  # a QoS 1 redelivery
    assert seen.first_time("c")  # "a" is now the oldest of three and forgotten
    assert seen.first_time("a") and not seen.first_time("c")


def test_router_first_match_wins_and_returns_the_plus_levels() -> None:
    router: Router[str] = Router()
    router.add("ars/server/cmd", "request")
    router.add("ars/robots/+/model/status", "status")
    router.add("ars/robots/+/#", "any robot topic")
    assert router.match("ars/server/cmd") == ("request", ())
    assert router.match("ars/robots/rover1/model/status") == ("status", ("rover1",))
    assert router.match("ars/robots/rover1/model/chunk") == ("any robot topic", ("rover1",))
    assert router.match("ars/robots/rover1") == ("any robot topic", ("rover1",))  # "#": parent too
    assert router.match("ars/server/cmd/extra") is None and router.match("other") is None
    assert router.patterns[0] == "ars/server/cmd"


def test_topic_matches_follows_the_mqtt_filter_rules() -> None:
    assert topic_matches("a/b/c", "a/+/c") and topic_matches("a/b/c", "a/#")
    assert topic_matches("a/b", "a/b") and not topic_matches("a/b", "a/b/c")
    assert not topic_matches("a/b/c", "a/+") and not topic_matches("x/b", "a/+")
