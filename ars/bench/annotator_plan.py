"""What the simulated annotator of ``ars bench annotation`` decides, from what a person sees: the
crop's current labels and (standing in for the person's eyes) its ground truth.

Pure numpy on small crops (a few hundred pixels a side): accuracy, the largest wrong connected
area and the class it should have, a scribble well inside it, and a polygon around it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

IGNORE = 255


def accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of the pixels with a true class (not ignore) that carry it."""
    valid = truth != IGNORE
    n = int(valid.sum())
    return float((labels[valid] == truth[valid]).sum() / n) if n else 1.0


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of ``mask``: (int32 ids, 0 outside, 1..n inside; n)."""
    h, w = mask.shape
    ids = np.zeros((h, w), np.int32)
    flat, out = mask.ravel(), ids.ravel()
    n = 0
    for start in np.flatnonzero(flat):
        if out[start]:
            continue
        n += 1
        out[start] = n
        queue = deque([int(start)])
        while queue:
            i = queue.popleft()
            y, x = divmod(i, w)
            for j, ok in ((i - 1, x > 0), (i + 1, x < w - 1), (i - w, y > 0), (i + w, y < h - 1)):
                if ok and flat[j] and not out[j]:
                    out[j] = n
                    queue.append(j)
    return ids, n


@dataclass(frozen=True)
class Target:
    """The largest connected area that is wrong and should all be ``cls``."""

    cls: int
    mask: np.ndarray  # bool, the area
    area: int


def wrong_areas(labels: np.ndarray, truth: np.ndarray, limit: int = 8) -> list[Target]:
    """The ``limit`` largest connected areas that are wrong and should each be one class."""
    wrong = (truth != IGNORE) & (labels != truth)
    found: list[Target] = []
    for cls in np.unique(truth[wrong]):
        ids, _ = components(wrong & (truth == cls))
        sizes = np.bincount(ids.ravel())[1:]
        for k in np.argsort(-sizes)[:limit]:
            found.append(Target(int(cls), ids == k + 1, int(sizes[k])))
    found.sort(key=lambda t: -t.area)
    return found[:limit]


def largest_wrong(
    labels: np.ndarray, truth: np.ndarray, skip: list[np.ndarray] | None = None
) -> Target | None:
    """The largest wrong area that is not mostly one of the ``skip`` areas (tried and failed)."""
    for target in wrong_areas(labels, truth):
        if not any((target.mask & s).sum() > 0.5 * target.area for s in skip or []):
            return target
    return None


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels whose whole (2r+1)^2 neighbourhood is in ``mask``."""
    if r <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, r, constant_values=False)
    out = np.ones_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def depth(mask: np.ndarray) -> int:
    """The largest r with ``erode(mask, r)`` not empty (how thick the area is)."""
    r = 0
    current = mask
    while True:
        nxt = erode(current, 1)
        if not nxt.any():
            return r
        current, r = nxt, r + 1


def scribble(mask: np.ndarray, radius: int, max_len: int = 40) -> list[tuple[int, int]]:
    """A horizontal line (start, end pixel) inside ``mask`` at least ``radius`` from its edge,
    the longest such run (capped at ``max_len``, centred); a single point if none is long."""
    inside = erode(mask, radius)
    if not inside.any():
        inside = erode(mask, depth(mask))
    best = (0, 0, 0, -1)  # y, x0, x1, length
    for y in range(inside.shape[0]):
        row = np.concatenate(([False], inside[y], [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(row))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            if b - a > best[3]:
                best = (y, int(a), int(b) - 1, int(b - a))
    y, x0, x1, length = best
    if length > max_len:
        mid = (x0 + x1) // 2
        x0, x1 = mid - max_len // 2, mid + max_len // 2
    return [(x0, y), (x1, y)]


def _simplify(points: np.ndarray, tol: float) -> np.ndarray:
    """Douglas-Peucker on an open polyline."""
    if len(points) < 3:
        return points
    a, b = points[0], points[-1]
    d = b - a
    norm = float(np.hypot(*d))
    rel = points - a
    dist = np.abs(d[0] * rel[:, 1] - d[1] * rel[:, 0]) / norm if norm else np.hypot(*rel.T)
    k = int(np.argmax(dist))
    if dist[k] <= tol:
        return np.array([a, b])
    left = _simplify(points[: k + 1], tol)
    return np.vstack([left[:-1], _simplify(points[k:], tol)])


def polygon(mask: np.ndarray, tol: float = 1.0) -> list[tuple[int, int]]:
    """Vertices (x, y pixels) around the largest outline of ``mask``, simplified to ``tol``."""
    import contourpy  # matplotlib's contour library (a dependency of matplotlib)

    # pad so outlines touching the crop's edge close; contour at 0.5 between pixel centres,
    # pushed half a pixel outwards by contouring a slightly dilated field
    field = np.pad(mask.astype(np.float64), 1)
    lines: list[np.ndarray] = [
        np.asarray(line, np.float64) for line in contourpy.contour_generator(z=field).lines(0.25)
    ]
    if not lines:
        return []
    line = max(lines, key=len) - 1.0  # back to crop coordinates
    closed = line if np.allclose(line[0], line[-1]) else np.vstack([line, line[:1]])
    simple = _simplify(closed, tol)[:-1]
    h, w = mask.shape
    pts = [(int(np.clip(round(x), 0, w - 1)), int(np.clip(round(y), 0, h - 1))) for x, y in simple]
    return [p for i, p in enumerate(pts) if i == 0 or p != pts[i - 1]]
