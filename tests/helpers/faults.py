"""Helpers for the fault and bad-input tests (tests/test_faults_*.py, tests/test_fuzz_*.py).

(No tests here.) A broker that can be restarted on the same port (the embedded one in-process,
Mosquitto as a process), a digest of a data directory that reads SQLite tables row by row (so
WAL checkpoints do not count as changes), a corpus of malformed payloads, and a child process
running one agent so a test can SIGKILL it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import shutil
import sqlite3
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from broker.credentials import Credentials, ensure_credentials
from broker.embedded import free_port
from common.envelope import MAGIC, encode
from common.hashing import sha256_file
from server_agent.store import Store, VersionRow
from tests.helpers.brokers import ROBOT_IDS, BrokerHandle

REPO = Path(__file__).resolve().parents[2]


# --- a broker that restarts on the same port -------------------------------------------------
class RestartableBroker:
    """``ars broker`` or Mosquitto on a fixed port; ``restart()`` stops and starts the process.

    Credentials (and so the password file) stay the same across restarts, as a deployment's do.
    """

    def __init__(self, kind: str, tmp_path: Path) -> None:
        if kind not in ("amqtt", "mosquitto"):
            raise ValueError(kind)
        self.kind = kind
        self.data_dir = tmp_path / f"{kind}-restartable"
        self.creds: Credentials = ensure_credentials(self.data_dir, list(ROBOT_IDS))
        self.port = free_port()
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._conf: Path | None = None

    @property
    def handle(self) -> BrokerHandle:
        return BrokerHandle(
            host="127.0.0.1", port=self.port, creds=self.creds, data_dir=self.data_dir
        )

    async def start(self) -> None:
        if self.kind == "amqtt":
            # ``ars broker`` as its own process, as deployed. (In-process, amqtt's shutdown()
            # can hang with a QoS 1 delivery in flight; see docs/reliability.md.)
            self._proc = await spawn_cli(
                [
                    "broker",
                    "--data-dir",
                    str(self.data_dir / "run"),
                    "--port",
                    str(self.port),
                    "--password-file",
                    str(self.creds.password_file),
                ],
                self.data_dir / "broker.log",
            )
        else:
            await self._start_mosquitto()
        await self._wait_listening()

    async def _start_mosquitto(self) -> None:
        from broker.mosquitto import write_mosquitto_config

        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(binary):  # noqa: ASYNC240
            pytest.fail("mosquitto is not installed: run `make system-deps`")
        if self._conf is None:
            self._conf = write_mosquitto_config(
                self.data_dir / "conf",
                self.creds,
                list(ROBOT_IDS),
                port=self.port,
                run_as="root" if os.geteuid() == 0 else None,
            )
        self._proc = await asyncio.create_subprocess_exec(binary, "-c", str(self._conf))

    async def _wait_listening(self) -> None:
        for _ in range(1200):  # up to a minute: a python process on a busy machine
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        pytest.fail(f"{self.kind} broker is not listening on {self.port}")

    async def stop(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            await end(proc, timeout=10.0)

    async def restart(self, down_s: float = 0.5) -> None:
        """Stop, stay down ``down_s`` (clients see refused connections), start again."""
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()
        self.restarts += 1


@contextlib.asynccontextmanager
async def restartable_broker(kind: str, tmp_path: Path) -> AsyncIterator[RestartableBroker]:
    broker = RestartableBroker(kind, tmp_path)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


# --- stored state set up by hand ------------------------------------------------------------
def register_version(
    root: Path, version: str, robot_id: str = "rover1", seed: int = 7
) -> VersionRow:
    """A registered model version (checkpoint + row), as a finished fine-tune leaves it."""
    from tests.helpers.server import tiny_checkpoint

    store = Store(root)
    try:
        path = tiny_checkpoint(store.model_path(version), version=version, seed=seed)
        row = VersionRow(
            version=version,
            robot_id=robot_id,
            created=time.time(),
            sha256=sha256_file(path),
            bytes=path.stat().st_size,
            arch="tiny",
            dtype="fp16",
            metrics={"miou_rural": 0.9},
            metrics_before={"miou_rural": 0.1},
            parent="base",
        )
        store.add_version(row)
    finally:
        store.close()
    return row


def labeled_regions(root: Path, n: int, robot_id: str = "rover1") -> list[str]:
    """``n`` stored regions with an annotation each (what a finished annotation session leaves)."""
    import numpy as np

    from common.images import encode_png
    from tests.helpers.server import make_region

    store = Store(root)
    ids = []
    try:
        for i in range(n):
            header, crop, mask = make_region(robot_id, region_id=f"reg-{i}", seed=i, score=i / n)
            store.add_region(header, crop, mask)
            row = store.get_region(header.region_id)
            assert row is not None
            _, _, w, h = header.box
            label = np.full((h, w), 0 if i % 2 else 8, np.uint8)
            store.save_annotation(row, encode_png(label), labeled_pixels=w * h)
            ids.append(header.region_id)
    finally:
        store.close()
    return ids


# --- what is stored --------------------------------------------------------------------------
SQLITE_SUFFIXES = (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".sqlite3-journal")


def sqlite_rows(path: Path, skip: tuple[str, ...] = ()) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, sorted (read through SQLite, so the WAL is included)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        names = [n for n in names if n not in skip]
        return {n: sorted(db.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}
    finally:
        db.close()


def tree_digest(
    root: Path, *, ignore: Callable[[Path], bool] | None = None, skip_tables: tuple[str, ...] = ()
) -> dict[str, str]:
    """{relative path: SHA-256} of every file under ``root`` (temp files left out), with each
    SQLite database replaced by a digest of its rows."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.name.endswith(".tmp"):
            continue
        if ignore is not None and ignore(path):
            continue
        rel = str(path.relative_to(root))
        if path.name.endswith(SQLITE_SUFFIXES[1:]):
            continue
        if path.name.endswith(".sqlite3"):
            rows = sqlite_rows(path, skip_tables)
            out[rel] = hashlib.sha256(repr(rows).encode()).hexdigest()
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def table_counts(db_path: Path) -> dict[str, int]:
    return {name: len(rows) for name, rows in sqlite_rows(db_path).items()}


# --- malformed payloads ----------------------------------------------------------------------
def raw_envelope(
    header: Any,
    parts: Sequence[bytes] = (),
    *,
    declare: list[Any] | None = None,
    hlen: int | None = None,
) -> bytes:
    """An envelope built by hand, so its lengths and header can lie."""
    body = dict(header) if isinstance(header, dict) else header
    if isinstance(body, dict):
        body["parts"] = declare if declare is not None else [len(p) for p in parts]
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return MAGIC + struct.pack(">I", len(raw) if hlen is None else hlen) + raw + b"".join(parts)


def corpus(rid: str = "rover1") -> dict[str, bytes]:
    """Hand-made bad payloads, each named by what is wrong with it (used on every handler)."""
    good_cmd = {"v": 1, "cmd": "start_segmentation"}
    region = {
        "v": 1,
        "type": "region",
        "robot_id": rid,
        "transfer_id": "t1",
        "region_id": "r1",
        "frame_id": "f1",
        "score": 0.5,
        "mean_entropy": 0.1,
        "region_entropy": 0.2,
        "box": [0, 0, 4, 4],
        "frame_size": [8, 8],
        "model_version": "base",
    }
    chunk = {"v": 1, "version": "v9", "index": 0, "sha256": "0" * 64}
    offer = {
        "v": 1,
        "robot_id": rid,
        "version": "v9",
        "sha256": "0" * 64,
        "bytes": 10,
        "chunk_size": 10,
        "chunks": 1,
        "arch": "tiny",
        "dtype": "fp32",
    }
    cases: dict[str, bytes] = {
        "empty": b"",
        "one byte": b"{",
        "not utf8": b"\xff\xfe\xfd",
        "invalid json": b'{"v": 1, "cmd": ',
        "json array": b"[1, 2, 3]",
        "json string": b'"start_segmentation"',
        "json null": b"null",
        "nan literal": b'{"v": 1, "cmd": "start_segmentation", "args": {"x": NaN}}',
        "infinity literal": b'{"v": 1, "score": Infinity}',
        "wrong schema version": json.dumps({**good_cmd, "v": 2}).encode(),
        "no schema version": b'{"cmd": "start_segmentation"}',
        "unknown command": b'{"v": 1, "cmd": "self_destruct"}',
        "huge command name": json.dumps({"v": 1, "cmd": "x" * 10_000}).encode(),
        "id with slash": json.dumps({**good_cmd, "id": "../../etc/passwd"}).encode(),
        "id dotdot": json.dumps({**good_cmd, "id": "a..b"}).encode(),
        "extra field": json.dumps({**good_cmd, "evil": True}).encode(),
        "deep nesting": b'{"v": 1, "cmd": "x", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "envelope magic only": MAGIC,
        "envelope truncated header": MAGIC + struct.pack(">I", 100) + b'{"v":1',
        "envelope huge declared header": MAGIC + struct.pack(">I", 2**31) + b"{}",
        "envelope header not json": MAGIC + struct.pack(">I", 3) + b"abc",
        "envelope header is a list": raw_envelope([1, 2]),
        "envelope wrong version": raw_envelope({**region, "v": 7}, [b"a", b"b"]),
        "envelope part lengths lie": raw_envelope(region, [b"abc", b"de"], declare=[3, 999]),
        "envelope huge declared part": raw_envelope(region, [b"a"], declare=[2**40]),
        "envelope negative part": raw_envelope(region, [b"a"], declare=[-1]),
        "envelope part length not int": raw_envelope(region, [b"a"], declare=["1"]),
        "region path id": raw_envelope({**region, "region_id": "../x"}, [b"a", b"b"]),
        "region slash robot": raw_envelope({**region, "robot_id": "rover1/../x"}, [b"a", b"b"]),
        "region negative box": raw_envelope({**region, "box": [-1, 0, 4, 4]}, [b"a", b"b"]),
        "region nan score": raw_envelope({**region, "score": math.nan}, [b"a", b"b"]),
        "region not images": raw_envelope(region, [b"not a png", b"nor this"]),
        "region one part": raw_envelope(region, [b"x"]),
        "region unknown type": raw_envelope({**region, "type": "virus"}, [b"a", b"b"]),
        "manifest bad ids": raw_envelope(
            {
                "v": 1,
                "type": "manifest",
                "robot_id": rid,
                "transfer_id": "t",
                "region_ids": ["../a", "b/c"],
                "frames_considered": -5,
                "bytes_sent": -1,
                "full_frames_bytes": 0,
            }
        ),
        "chunk wrong sha": raw_envelope(chunk, [b"0123456789"]),
        "chunk negative index": raw_envelope({**chunk, "index": -3}, [b"x"]),
        "chunk huge index": raw_envelope({**chunk, "index": 10**12}, [b"x"]),
        "chunk two parts": raw_envelope(chunk, [b"x", b"y"]),
        "offer huge size": json.dumps({**offer, "bytes": 10**15, "chunks": 10**9}).encode(),
        "offer negative size": json.dumps({**offer, "bytes": -1}).encode(),
        "offer other robot": json.dumps({**offer, "robot_id": "rover2"}).encode(),
        "offer path version": json.dumps({**offer, "version": "../../v"}).encode(),
        "offer chunk count lies": json.dumps({**offer, "chunks": 7}).encode(),
        "ack other robot": json.dumps(
            {"v": 1, "robot_id": "rover2", "transfer_id": "t", "stored": ["a"], "rejected": {}}
        ).encode(),
        "ack path ids": json.dumps(
            {"v": 1, "robot_id": rid, "transfer_id": "../t", "stored": ["../../a"], "rejected": {}}
        ).encode(),
        "oversize payload": b"{" + b" " * (3 * 1024 * 1024) + b"}",
    }
    return cases


def bomb_png(side: int = 20000) -> bytes:
    """A tiny PNG declaring ``side`` x ``side`` pixels (a decompression bomb)."""
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * side
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def region_envelope(header: dict[str, Any], parts: list[bytes]) -> bytes:
    return encode(header, parts)


# --- a child process running one agent -------------------------------------------------------
async def spawn_cli(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``python -m ars.cli ARGV`` (as deployed) with output to ``log``."""
    full = dict(os.environ)
    full.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    full.update(env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:  # noqa: ASYNC230
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ars.cli", *argv, stdout=fh, stderr=fh, env=full, cwd=REPO
        )


async def end(proc: asyncio.subprocess.Process, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaps."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
