"""One small topic router: a handler per MQTT topic filter, looked up per message.

The agents register their handlers here (filters built by ``Topics``) instead of each writing its
own dispatch; the levels a ``+`` matched (a robot id) come back with the handler. The broker's
ACL uses the same filter rule (``topic_matches``).
"""

from __future__ import annotations

from typing import Generic, TypeVar

H = TypeVar("H")


def topic_matches(topic: str, pattern: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest)."""
    return _captures(topic, pattern) is not None


def _captures(topic: str, pattern: str) -> tuple[str, ...] | None:
    """The levels ``pattern``'s ``+`` wildcards match in ``topic``; None when it does not match."""
    t, p = topic.split("/"), pattern.split("/")
    found: list[str] = []
    for i, part in enumerate(p):
        if part == "#":
            return tuple(found)
        if i >= len(t) or (part != "+" and part != t[i]):
            return None
        if part == "+":
            found.append(t[i])
    return tuple(found) if len(t) == len(p) else None


class Router(Generic[H]):
    """Topic filters to handlers; the first filter added that matches wins."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, H]] = []

    def add(self, pattern: str, handler: H) -> None:
        self._routes.append((pattern, handler))

    @property
    def patterns(self) -> list[str]:
        return [pattern for pattern, _ in self._routes]

    def match(self, topic: str) -> tuple[H, tuple[str, ...]] | None:
        """The handler for ``topic`` and what its filter's ``+`` levels matched, or None."""
        for pattern, handler in self._routes:
            found = _captures(topic, pattern)
            if found is not None:
                return handler, found
        return None
