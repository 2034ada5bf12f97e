"""Helpers shared by the `ars pretrain` and `ars eval` commands."""

from __future__ import annotations

import argparse
import re


def parse_hw(text: str) -> tuple[int, int]:
    """Parse "HxW" (e.g. 240x320) into (height, width)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 8 or int(m.group(2)) < 8:
        raise argparse.ArgumentTypeError(f"expected HxW with both >= 8, e.g. 240x320, got {text!r}")
    return int(m.group(1)), int(m.group(2))
