"""Per-browser outgoing queue: latest wins, bounded, never blocks the producer.

The relay's single MQTT reader puts into every client's queue synchronously; each browser has
its own sender task draining it. Items under a *key* (a robot's previews, its state, the server
state) replace the queued older item with that key, so a slow browser gets the newest frame and
never a backlog. Keyless items (events, replies, errors) are kept in order up to ``maxsize``;
beyond that the oldest keyless item is dropped. Nothing here ever awaits the consumer.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import Hashable

Frame = str | bytes


class LatestWinsQueue:
    """A bounded queue where keyed items coalesce (newest wins) and old items are dropped."""

    def __init__(self, maxsize: int = 64) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.dropped = 0
        self._items: OrderedDict[Hashable, Frame] = OrderedDict()
        self._seq = itertools.count()
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: Frame, key: Hashable | None = None) -> None:
        """Queue ``item``; with ``key`` it replaces a queued item under the same key."""
        if self._closed:
            return
        if key is not None:
            slot: Hashable = ("k", key)
            if slot in self._items:
                self.dropped += 1
                del self._items[slot]
        else:
            slot = ("s", next(self._seq))
        self._items[slot] = item
        while len(self._items) > self.maxsize:
            self._drop_oldest()
        self._ready.set()

    def _drop_oldest(self) -> None:
        victim: Hashable = next(iter(self._items))
        for slot in self._items:
            if isinstance(slot, tuple) and slot[0] == "s":
                victim = slot
                break
        del self._items[victim]
        self.dropped += 1

    def get_nowait(self) -> Frame | None:
        if not self._items:
            return None
        _, item = self._items.popitem(last=False)
        if not self._items:
            self._ready.clear()
        return item

    async def get(self) -> Frame:
        """The oldest queued item; waits while empty. Raises ``QueueClosed`` once closed."""
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            if self._closed:
                raise QueueClosed
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        self._closed = True
        self._items.clear()
        self._ready.set()


class QueueClosed(Exception):
    """The queue was closed: the browser went away."""
