"""The soak bench in a short setting (CI): one robot, half a minute, nothing lost.

``ars bench soak --minutes 30`` (4 robots) is the real run; its figures are in
docs/reliability.md. Here the same code runs long enough for a few loops.
"""

from __future__ import annotations

import argparse

import pytest

from ars.bench import soak
from common.config import Settings

pytestmark = pytest.mark.slow


def test_soak_short_setting_loses_nothing() -> None:
    parser = argparse.ArgumentParser()
    soak.add_arguments(parser)
    args = parser.parse_args(
        ["--minutes", "0.5", "--robots", "1", "--warmup-s", "5", "--sample-s", "2"]
    )
    result = soak.run(args, Settings())
    assert result["loops_completed"] >= 1, result
    assert result["lost_items"] == 0, result
    assert result["errors"] == 0, result
    assert set(result["rss_growth_mb"]) == {"broker", "server", "web", "rover1"}
    assert result["regions_stored"] == result["annotations_stored"] > 0
