"""A temporally coherent drive along one route, with random access to any frame."""

from __future__ import annotations

import re
from collections.abc import Iterator

from common.errors import ConfigError, ProtocolError
from simulator.scene import SPECS, Frame, check_args, render_indexed

_ID_RE = re.compile(
    r"^(?P<spec>urban|rural|drive|route)-s(?P<seed>\d{1,10})-w(?P<w>\d{1,4})x(?P<h>\d{1,4})"
    r"(?:-k(?P<k>\d{1,9}))?-i(?P<i>\d{1,9})$"
)


class Drive:
    """Frames of a camera driving forward; ``spec`` 'drive' goes urban -> rural at ``switch_at``.

    Frame i is derived from (spec, seed, i) alone, so ``frame(i)`` is cheap and deterministic and
    equals the i-th frame of iteration.
    """

    def __init__(
        self,
        spec: str = "drive",
        seed: int = 0,
        width: int = 640,
        height: int = 480,
        switch_at: int = 300,
    ) -> None:
        try:
            check_args(spec, seed, width, height, switch_at)
        except ValueError as exc:
            raise ConfigError(f"Drive: {exc}") from exc
        self.spec = spec
        self.seed = seed
        self.width = width
        self.height = height
        self.switch_at = switch_at

    def frame(self, index: int) -> Frame:
        """Frame ``index`` (>= 0)."""
        return render_indexed(self.spec, self.seed, self.width, self.height, self.switch_at, index)

    def domain_at(self, index: int) -> str:
        if self.spec != "drive":
            return self.spec
        return "urban" if index < self.switch_at else "rural"

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            yield self.frame(index)
            index += 1

    def __repr__(self) -> str:
        return (
            f"Drive({self.spec!r}, seed={self.seed}, width={self.width}, height={self.height}, "
            f"switch_at={self.switch_at})"
        )


def parse_frame_id(frame_id: str) -> tuple[str, int, int, int, int, int]:
    """(spec, seed, width, height, switch_at, index) of a frame id; ProtocolError if malformed."""
    m = _ID_RE.match(frame_id) if isinstance(frame_id, str) else None
    if m is None:
        raise ProtocolError(f"bad frame id {frame_id!r}")
    spec = m["spec"]
    if (spec == "drive") != (m["k"] is not None):
        raise ProtocolError(f"bad frame id {frame_id!r}: -k<switch_at> is for drive ids only")
    seed, width, height, index = int(m["seed"]), int(m["w"]), int(m["h"]), int(m["i"])
    switch_at = int(m["k"]) if m["k"] is not None else 0
    if spec not in SPECS:
        raise ProtocolError(f"bad frame id {frame_id!r}: unknown spec")
    try:
        check_args(spec, seed, width, height, switch_at)
    except ValueError as exc:
        raise ProtocolError(f"bad frame id {frame_id!r}: {exc}") from exc
    return spec, seed, width, height, switch_at, index


def frame_from_id(frame_id: str) -> Frame:
    """Re-render the frame an id names (e.g. ``drive-s3-w640x480-k300-i17``)."""
    spec, seed, width, height, switch_at, index = parse_frame_id(frame_id)
    frame = render_indexed(spec, seed, width, height, switch_at, index)
    if frame.frame_id != frame_id:  # e.g. leading zeros: the id is not canonical
        raise ProtocolError(f"bad frame id {frame_id!r}: not canonical ({frame.frame_id!r})")
    return frame
