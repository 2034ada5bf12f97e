"""Command de-duplication: QoS 1 may deliver a command twice; it is acted on once.

Both agents remember the last ``size`` command ids they acted on (oldest forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict


class SeenIds:
    """A bounded set of recent ids, in arrival order."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, item: str) -> bool:
        """True the first time ``item`` comes (and remember it), False for a repeat."""
        if item in self._ids:
            return False
        self._ids[item] = None
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True
