"""The server's registry: SQLite (stdlib) for regions, annotations, model versions, robots and
jobs; images and checkpoints as files written atomically (temp file + ``os.replace``).

A row is written only after its files are in place, so a crash leaves at worst an orphan file,
never a row pointing at nothing. One connection, guarded by a lock: callers use it from worker
threads (``asyncio.to_thread``) so the event loop never waits on the disk.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.errors import StorageError
from common.files import sync_filesystem, write_atomic
from common.ids import check_id
from common.schemas import ModelVersionInfo, RegionHeader

logger = logging.getLogger(__name__)

AnnotationState = Literal["labeled", "skipped"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS regions(
    region_id TEXT PRIMARY KEY,
    robot_id TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    frame_id TEXT NOT NULL,
    score REAL NOT NULL,
    header TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS regions_by_robot ON regions(robot_id, score DESC);
CREATE TABLE IF NOT EXISTS annotations(
    region_id TEXT PRIMARY KEY REFERENCES regions(region_id),
    state TEXT NOT NULL CHECK (state IN ('labeled', 'skipped')),
    labeled_pixels INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions(
    version TEXT PRIMARY KEY,
    robot_id TEXT NOT NULL,
    created REAL NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    arch TEXT NOT NULL,
    dtype TEXT NOT NULL,
    metrics TEXT NOT NULL,
    metrics_before TEXT NOT NULL,
    parent TEXT,
    job_id TEXT
);
CREATE TABLE IF NOT EXISTS robots(
    robot_id TEXT PRIMARY KEY,
    active_version TEXT,
    last_status TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs(
    job_id TEXT PRIMARY KEY,
    robot_id TEXT NOT NULL,
    cmd_id TEXT NOT NULL,
    state TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    version TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class RegionRow:
    """One stored region and its annotation state."""

    region_id: str
    robot_id: str
    frame_id: str
    score: float
    header: dict[str, Any]
    annotated: bool = False
    skipped: bool = False

    @property
    def box(self) -> tuple[int, int, int, int]:
        x, y, w, h = self.header["box"]
        return int(x), int(y), int(w), int(h)

    @property
    def frame_size(self) -> tuple[int, int]:
        fw, fh = self.header["frame_size"]
        return int(fw), int(fh)

    def summary(self) -> dict[str, Any]:
        """The ``list_regions`` entry of this region."""
        x, y, w, h = self.box
        return {
            "region_id": self.region_id,
            "robot_id": self.robot_id,
            "frame_id": self.frame_id,
            "score": self.score,
            "box": [x, y, w, h],
            "frame_size": list(self.frame_size),
            "width": w,
            "height": h,
            "annotated": self.annotated,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class VersionRow:
    """One registered model version (a row of ``model_versions``)."""

    version: str
    robot_id: str
    created: float
    sha256: str
    bytes: int
    arch: str
    dtype: str
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_before: dict[str, float] = field(default_factory=dict)
    parent: str | None = None
    job_id: str | None = None

    def info(self, active_on: Sequence[str] = ()) -> ModelVersionInfo:
        return ModelVersionInfo(
            version=self.version,
            robot_id=self.robot_id,
            created=self.created,
            sha256=self.sha256,
            bytes=self.bytes,
            arch=self.arch,
            metrics=self.metrics,
            parent=self.parent,
            active_on=list(active_on),
        )


class Store:
    """Regions, annotations, model versions, robots and jobs under one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.regions_dir = self.root / "regions"
        self.models_dir = self.root / "models"
        self._lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.root / "server.sqlite3", check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the server store in {self.root}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; sqlite errors become StorageError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StorageError(f"server store: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise StorageError(f"server store: {exc}") from exc

    # --- regions ---------------------------------------------------------------------------
    def region_dir(self, robot_id: str, region_id: str) -> Path:
        return self.regions_dir / check_id(robot_id, "robot id") / check_id(region_id, "region id")

    def add_region(self, header: RegionHeader, crop_png: bytes, mask_png: bytes) -> bool:
        """Store a validated region; False when its id is already stored.

        The files are written atomically but not fsynced one by one: the intake makes a
        transfer's regions durable together (`sync`) before it acknowledges them. A region
        stored before a power cut that lost its files' contents comes back unacknowledged, so
        its robot sends it again: a redelivery rewrites files that are missing or empty.
        """
        folder = self.region_dir(header.robot_id, header.region_id)
        if self.region_owner(header.region_id) is not None:
            for name, data in (("crop.png", crop_png), ("pred.png", mask_png)):
                path = folder / name
                with suppress(OSError):
                    if path.stat().st_size > 0:
                        continue
                try:
                    write_atomic(path, data, durable=False)
                except OSError as exc:
                    raise StorageError(f"cannot rewrite region {header.region_id}: {exc}") from exc
            return False
        try:
            write_atomic(folder / "crop.png", crop_png, durable=False)
            write_atomic(folder / "pred.png", mask_png, durable=False)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise StorageError(f"cannot write region {header.region_id}: {exc}") from exc
        try:
            with self._tx() as db:
                cur = db.execute(
                    "INSERT OR IGNORE INTO regions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        header.region_id,
                        header.robot_id,
                        header.transfer_id,
                        header.frame_id,
                        header.score,
                        header.model_dump_json(),
                        time.time(),
                    ),
                )
                return cur.rowcount == 1
        except StorageError:
            # no row (e.g. disk full): no orphan files either; the robot sends it again
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def sync(self) -> None:
        """What was written so far (region files, the database's log) reaches the disk."""
        try:
            sync_filesystem(self.root)
        except OSError as exc:
            raise StorageError(f"cannot sync the server store in {self.root}: {exc}") from exc

    def region_owner(self, region_id: str) -> str | None:
        rows = self._query("SELECT robot_id FROM regions WHERE region_id = ?", (region_id,))
        return str(rows[0][0]) if rows else None

    _REGION_SELECT = (
        "SELECT r.region_id, r.robot_id, r.frame_id, r.score, r.header, a.state "
        "FROM regions r LEFT JOIN annotations a ON a.region_id = r.region_id"
    )

    @staticmethod
    def _region_row(row: tuple[Any, ...]) -> RegionRow:
        return RegionRow(
            region_id=row[0],
            robot_id=row[1],
            frame_id=row[2],
            score=float(row[3]),
            header=json.loads(row[4]),
            annotated=row[5] == "labeled",
            skipped=row[5] == "skipped",
        )

    def get_region(self, region_id: str) -> RegionRow | None:
        rows = self._query(f"{self._REGION_SELECT} WHERE r.region_id = ?", (region_id,))
        return self._region_row(rows[0]) if rows else None

    def list_regions(
        self, robot_id: str | None = None, *, ids: Sequence[str] | None = None
    ) -> list[RegionRow]:
        """Regions hardest first (score descending), of one robot or of the given ids."""
        where, params = [], []
        if robot_id is not None:
            where.append("r.robot_id = ?")
            params.append(robot_id)
        sql = self._REGION_SELECT + (f" WHERE {' AND '.join(where)}" if where else "")
        rows = [self._region_row(r) for r in self._query(f"{sql} ORDER BY r.score DESC", params)]
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r.region_id in wanted]
        return rows

    def counts(self) -> tuple[int, int]:
        """(regions stored, regions labeled)."""
        rows = self._query(
            "SELECT (SELECT COUNT(*) FROM regions), "
            "(SELECT COUNT(*) FROM annotations WHERE state = 'labeled')"
        )
        return int(rows[0][0]), int(rows[0][1])

    def read_region(self, row: RegionRow) -> tuple[bytes, bytes, bytes]:
        """(crop PNG, predicted mask PNG, annotation PNG or b"")."""
        folder = self.region_dir(row.robot_id, row.region_id)
        try:
            crop = (folder / "crop.png").read_bytes()
            pred = (folder / "pred.png").read_bytes()
            ann = folder / "annotation.png"
            return crop, pred, ann.read_bytes() if row.annotated and ann.exists() else b""
        except OSError as exc:
            raise StorageError(f"cannot read region {row.region_id}: {exc}") from exc

    # --- annotations -----------------------------------------------------------------------
    def save_annotation(
        self, row: RegionRow, mask_png: bytes | None, *, labeled_pixels: int = 0
    ) -> None:
        """A label (``mask_png``) or a skip (None): file first, then the row."""
        state: AnnotationState = "skipped" if mask_png is None else "labeled"
        if mask_png is not None:
            path = self.region_dir(row.robot_id, row.region_id) / "annotation.png"
            try:
                write_atomic(path, mask_png)
            except OSError as exc:
                raise StorageError(f"cannot write annotation {row.region_id}: {exc}") from exc
        with self._tx() as db:
            db.execute(
                "INSERT INTO annotations VALUES (?, ?, ?, ?) ON CONFLICT(region_id) DO UPDATE "
                "SET state = excluded.state, labeled_pixels = excluded.labeled_pixels, "
                "updated = excluded.updated",
                (row.region_id, state, labeled_pixels, time.time()),
            )

    def annotation_times(self) -> dict[str, tuple[float, int]]:
        """Labeled regions: region id -> (time of its last label, labeled pixels)."""
        rows = self._query(
            "SELECT region_id, updated, labeled_pixels FROM annotations WHERE state = 'labeled'"
        )
        return {str(r[0]): (float(r[1]), int(r[2])) for r in rows}

    def labeled_regions(self, robot_id: str) -> list[RegionRow]:
        return [r for r in self.list_regions(robot_id) if r.annotated]

    # --- model versions and robots ---------------------------------------------------------
    def model_path(self, version: str) -> Path:
        return self.models_dir / f"{check_id(version, 'model version')}.pt"

    def add_version(self, row: VersionRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.version,
                    row.robot_id,
                    row.created,
                    row.sha256,
                    row.bytes,
                    row.arch,
                    row.dtype,
                    json.dumps(row.metrics),
                    json.dumps(row.metrics_before),
                    row.parent,
                    row.job_id,
                ),
            )

    def versions(self, robot_id: str | None = None) -> list[VersionRow]:
        """Registered versions, newest first."""
        sql = "SELECT * FROM model_versions"
        params: list[Any] = []
        if robot_id is not None:
            sql += " WHERE robot_id = ?"
            params.append(robot_id)
        rows = self._query(sql + " ORDER BY created DESC, rowid DESC", params)
        return [
            VersionRow(
                version=r[0],
                robot_id=r[1],
                created=float(r[2]),
                sha256=r[3],
                bytes=int(r[4]),
                arch=r[5],
                dtype=r[6],
                metrics=json.loads(r[7]),
                metrics_before=json.loads(r[8]),
                parent=r[9],
                job_id=r[10],
            )
            for r in rows
        ]

    def version(self, version: str) -> VersionRow | None:
        return next((v for v in self.versions() if v.version == version), None)

    def touch_robot(self, robot_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO robots(robot_id, updated) VALUES (?, ?)",
                (robot_id, time.time()),
            )

    def set_active(self, robot_id: str, version: str | None, status: str) -> None:
        """Record the model a robot runs (from its ModelStatus or its retained state)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO robots VALUES (?, ?, ?, ?) ON CONFLICT(robot_id) DO UPDATE SET "
                "active_version = excluded.active_version, last_status = excluded.last_status, "
                "updated = excluded.updated",
                (robot_id, version, status, time.time()),
            )

    def robots(self) -> dict[str, str | None]:
        """Known robots and the version each runs (None when unknown)."""
        return {str(r[0]): r[1] for r in self._query("SELECT robot_id, active_version FROM robots")}

    def model_infos(self) -> list[ModelVersionInfo]:
        active = self.robots()
        return [
            v.info(sorted(rid for rid, ver in active.items() if ver == v.version))
            for v in self.versions()
        ]

    # --- jobs ------------------------------------------------------------------------------
    def add_job(self, job_id: str, robot_id: str, cmd_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs(job_id, robot_id, cmd_id, state, started) "
                "VALUES (?, ?, ?, 'running', ?)",
                (job_id, robot_id, cmd_id, time.time()),
            )

    def finish_job(
        self, job_id: str, state: str, *, version: str | None = None, error: str | None = None
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished = ?, version = ?, error = ? WHERE job_id = ?",
                (state, time.time(), version, error, job_id),
            )

    def job_state(self, job_id: str) -> str | None:
        rows = self._query("SELECT state FROM jobs WHERE job_id = ?", (job_id,))
        return str(rows[0][0]) if rows else None

    def fail_running_jobs(self, reason: str) -> list[tuple[str, str, str]]:
        """Jobs a crash left 'running' become 'failed'; returns (job_id, robot_id, cmd_id)."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT job_id, robot_id, cmd_id FROM jobs WHERE state = 'running'"
            ).fetchall()
            db.execute(
                "UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE state = 'running'",
                (time.time(), reason),
            )
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    # --- small persistent values (the annotation session) ----------------------------------
    def get_meta(self, key: str) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )
