"""A one-slot mailbox where the newest item replaces the waiting one (latest wins).

The camera runs faster than inference: queueing frames would only add latency and memory, so a
frame that arrives while the worker is busy replaces the one waiting, and the count of replaced
items says how many were dropped.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestMailbox(Generic[T]):
    """Single consumer; ``put`` never blocks and never grows beyond one waiting item."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._full = False
        self._event = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self.put_count = 0
        self.dropped = 0

    def put(self, item: T) -> None:
        """Leave ``item`` for the consumer, replacing (dropping) one still waiting."""
        if self._full:
            self.dropped += 1
        self._item = item
        self._full = True
        self.put_count += 1
        self._empty.clear()
        self._event.set()

    async def get(self) -> T:
        """Wait for an item and take it."""
        while not self._full:
            self._event.clear()
            await self._event.wait()
        item = self._item
        self._item = None
        self._full = False
        self._empty.set()
        assert item is not None
        return item

    def clear(self) -> None:
        """Drop the waiting item, if any (segmentation stopped)."""
        self._item = None
        self._full = False
        self._empty.set()

    async def drained(self) -> None:
        """Wait until no item is waiting (taken or cleared): a producer that must drop
        nothing (a recording played as fast as the robot goes) waits here before ``put``."""
        await self._empty.wait()

    @property
    def waiting(self) -> bool:
        return self._full
