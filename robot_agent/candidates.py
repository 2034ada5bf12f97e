"""The bounded on-disk store of hard-region candidates (one per processed frame).

SQLite (stdlib) indexes the candidates; each one's crop and predicted-mask PNGs are files
written atomically (temp file, rename) before its row is inserted, so a row always has its
files. The files are not fsynced (two fsyncs cost 10-16 ms a frame, half the frame budget at
30 fps): a power cut may lose the last seconds of candidates, never serve a torn one, since on
open every row's files must have the sizes the row recorded. The store keeps at most
``max_candidates``: past that, sent candidates go first, then the lowest scores. It survives
restarts: on open, rows without intact files and files without rows (a crash between the two
writes) are removed.

Methods block (disk, SQLite): the agent calls them through ``asyncio.to_thread``; a lock makes
them safe from any thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from common.errors import StorageError
from common.files import write_atomic
from common.ids import check_id

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS candidates (
    region_id TEXT PRIMARY KEY,
    frame_id TEXT NOT NULL,
    score REAL NOT NULL,
    mean_entropy REAL NOT NULL,
    region_entropy REAL NOT NULL,
    x INTEGER NOT NULL, y INTEGER NOT NULL, w INTEGER NOT NULL, h INTEGER NOT NULL,
    frame_w INTEGER NOT NULL, frame_h INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    ts REAL NOT NULL,
    crop_bytes INTEGER NOT NULL,
    mask_bytes INTEGER NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS candidates_by_score ON candidates (sent, score);
"""
_COLUMNS = (
    "region_id, frame_id, score, mean_entropy, region_entropy, x, y, w, h, frame_w, frame_h, "
    "model_version, ts, crop_bytes, mask_bytes, sent"
)


@dataclass(frozen=True)
class Candidate:
    """One frame's hardest region: everything a RegionHeader needs, plus its PNG sizes."""

    region_id: str
    frame_id: str
    score: float
    mean_entropy: float
    region_entropy: float
    box: tuple[int, int, int, int]
    frame_size: tuple[int, int]
    model_version: str
    ts: float
    crop_bytes: int = 0
    mask_bytes: int = 0
    sent: bool = False

    @property
    def area_ratio(self) -> float:
        """Frame area / crop area: what a full frame costs relative to this crop."""
        return (self.frame_size[0] * self.frame_size[1]) / (self.box[2] * self.box[3])


class HardestOf(Generic[T]):
    """One of every ``n`` items, the highest-scoring: `offer` each item, store what it returns.

    At 30 fps neighbouring frames are near duplicates and storing one costs 10-25 ms, so the
    robot stores the hardest frame of every ``robot.store_every``.
    """

    def __init__(self, n: int, score: Callable[[T], float]) -> None:
        if n < 1:
            raise ValueError("n must be positive")
        self.n = n
        self.score = score
        self._best: T | None = None
        self._seen = 0

    def offer(self, item: T) -> T | None:
        """The hardest of the last ``n`` items once ``n`` have been offered, else None."""
        if self._best is None or self.score(item) > self.score(self._best):
            self._best = item
        self._seen += 1
        if self._seen < self.n:
            return None
        best, self._best, self._seen = self._best, None, 0
        return best

    def reset(self) -> None:
        self._best, self._seen = None, 0


def _row_to_candidate(row: tuple[Any, ...]) -> Candidate:
    (rid, fid, score, ment, rent, x, y, w, h, fw, fh, ver, ts, cb, mb, sent) = row
    return Candidate(
        region_id=str(rid),
        frame_id=str(fid),
        score=float(score),
        mean_entropy=float(ment),
        region_entropy=float(rent),
        box=(int(x), int(y), int(w), int(h)),
        frame_size=(int(fw), int(fh)),
        model_version=str(ver),
        ts=float(ts),
        crop_bytes=int(cb),
        mask_bytes=int(mb),
        sent=bool(sent),
    )


class CandidateStore:
    """Bounded, restart-safe candidate regions: SQLite index plus PNG files."""

    def __init__(self, root: Path, max_candidates: int) -> None:
        if max_candidates < 1:
            raise ValueError("max_candidates must be positive")
        self.root = root
        self.max_candidates = max_candidates
        self.crops = root / "crops"
        self.masks = root / "masks"
        self._lock = threading.Lock()
        try:
            self.crops.mkdir(parents=True, exist_ok=True)
            self.masks.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(root / "candidates.sqlite3", check_same_thread=False)
            self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"candidate store {root}: {exc}") from exc
        self.evicted = 0
        self._recover()
        self._count, self._unsent = self._counts()

    # --- paths and bookkeeping ---------------------------------------------------------
    def _crop_path(self, region_id: str) -> Path:
        return self.crops / f"{check_id(region_id, 'region id')}.png"

    def _mask_path(self, region_id: str) -> Path:
        return self.masks / f"{check_id(region_id, 'region id')}.png"

    def _counts(self) -> tuple[int, int]:
        total, unsent = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(sent = 0), 0) FROM candidates"
        ).fetchone()
        return int(total), int(unsent)

    def _intact(self, region_id: str, crop_bytes: int, mask_bytes: int) -> bool:
        """Both files there with the sizes the row recorded (unsynced writes: see the doc)."""
        try:
            return (
                self._crop_path(region_id).stat().st_size == crop_bytes
                and self._mask_path(region_id).stat().st_size == mask_bytes
            )
        except OSError:
            return False

    def _recover(self) -> None:
        """Drop rows whose files are gone or torn, and files (or temp files) without a row."""
        with self._lock:
            rows = self._db.execute("SELECT region_id, crop_bytes, mask_bytes FROM candidates")
            sizes = {r[0]: (int(r[1]), int(r[2])) for r in rows}
            ids = set(sizes)
            broken = [i for i in ids if not self._intact(i, *sizes[i])]
            if broken:
                logger.warning("candidate store: %d rows lost their files; removed", len(broken))
                self._db.executemany(
                    "DELETE FROM candidates WHERE region_id = ?", [(i,) for i in broken]
                )
                self._db.commit()
            keep = ids - set(broken)
            for folder in (self.crops, self.masks):
                for path in folder.iterdir():
                    if path.suffix != ".png" or path.stem not in keep:
                        path.unlink(missing_ok=True)

    @property
    def count(self) -> int:
        return self._count

    @property
    def unsent_count(self) -> int:
        return self._unsent

    # --- writes --------------------------------------------------------------------------
    def add(self, candidate: Candidate, crop_png: bytes, mask_png: bytes) -> int:
        """Store one candidate (files first, then the row); returns how many were evicted."""
        with self._lock:
            crop_path, mask_path = (
                self._crop_path(candidate.region_id),
                self._mask_path(candidate.region_id),
            )
            try:
                write_atomic(crop_path, crop_png, durable=False)
                write_atomic(mask_path, mask_png, durable=False)
                c = candidate
                self._db.execute(
                    f"INSERT OR REPLACE INTO candidates ({_COLUMNS}) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        c.region_id, c.frame_id, c.score, c.mean_entropy, c.region_entropy,
                        *c.box, *c.frame_size, c.model_version, c.ts,
                        len(crop_png), len(mask_png), int(c.sent),
                    ),
                )  # fmt: skip
                evicted = self._evict_locked()
                self._db.commit()
            except (OSError, sqlite3.Error) as exc:
                crop_path.unlink(missing_ok=True)
                mask_path.unlink(missing_ok=True)
                raise StorageError(
                    f"candidate store: cannot add {candidate.region_id}: {exc}"
                ) from exc
            self._count, self._unsent = self._counts()
            return evicted

    def _evict_locked(self) -> int:
        (total,) = self._db.execute("SELECT COUNT(*) FROM candidates").fetchone()
        excess = int(total) - self.max_candidates
        if excess <= 0:
            return 0
        victims = [
            r[0]
            for r in self._db.execute(
                "SELECT region_id FROM candidates ORDER BY sent DESC, score ASC, ts ASC LIMIT ?",
                (excess,),
            )
        ]
        self._delete_locked(victims)
        self.evicted += len(victims)
        return len(victims)

    def _delete_locked(self, region_ids: list[str]) -> None:
        self._db.executemany(
            "DELETE FROM candidates WHERE region_id = ?", [(i,) for i in region_ids]
        )
        for rid in region_ids:
            self._crop_path(rid).unlink(missing_ok=True)
            self._mask_path(rid).unlink(missing_ok=True)

    def mark_sent(self, region_ids: list[str]) -> None:
        with self._lock:
            try:
                self._db.executemany(
                    "UPDATE candidates SET sent = 1 WHERE region_id = ?",
                    [(i,) for i in region_ids],
                )
                self._db.commit()
            except sqlite3.Error as exc:
                raise StorageError(f"candidate store: cannot mark sent: {exc}") from exc
            self._count, self._unsent = self._counts()

    def delete(self, region_ids: list[str]) -> None:
        with self._lock:
            try:
                self._delete_locked(region_ids)
                self._db.commit()
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(f"candidate store: cannot delete: {exc}") from exc
            self._count, self._unsent = self._counts()

    # --- reads ---------------------------------------------------------------------------
    def unsent(self) -> list[Candidate]:
        """Every unsent candidate, highest score first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM candidates WHERE sent = 0 ORDER BY score DESC, ts ASC"
            ).fetchall()
        return [_row_to_candidate(r) for r in rows]

    def get(self, region_id: str) -> Candidate | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM candidates WHERE region_id = ?", (region_id,)
            ).fetchone()
        return _row_to_candidate(row) if row else None

    def read_parts(self, region_id: str) -> tuple[bytes, bytes]:
        """(crop PNG, mask PNG) of one candidate; StorageError when it is gone."""
        with self._lock:
            try:
                crop = self._crop_path(region_id).read_bytes()
                return crop, self._mask_path(region_id).read_bytes()
            except OSError as exc:
                raise StorageError(f"candidate {region_id}: files missing: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()
