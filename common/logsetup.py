"""Logging set-up, called only by entry points: structured (key=value) and quiet by default."""

from __future__ import annotations

import json
import logging
import sys
import time


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        msg = record.getMessage()
        line = f"{ts} level={record.levelname.lower()} logger={record.name} msg={json.dumps(msg)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "WARNING") -> None:
    """Configure the root logger once; libraries below WARNING stay quiet unless DEBUG."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if level.upper() != "DEBUG":
        for noisy in ("amqtt", "transitions", "aiohttp.access", "PIL"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
