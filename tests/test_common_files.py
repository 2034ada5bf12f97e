"""The one atomic write: old or new content, never torn, no temp file left behind."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from common.files import atomic_writer, sync_filesystem, write_atomic


def test_write_atomic_replaces_and_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "file.bin"
    write_atomic(path, b"one")
    write_atomic(path, b"two", mode=0o644)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_atomic(path, b"three")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # mkstemp's mode unless told
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    write_atomic(path, b"old")
    with pytest.raises(RuntimeError, match="disk"), atomic_writer(path) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("disk gone")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_sync_filesystem_syncs_and_names_a_missing_path(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.bin", b"abc", durable=False)
    sync_filesystem(tmp_path)  # returns once the file system's writes are on disk
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    with pytest.raises(OSError):
        sync_filesystem(tmp_path / "missing")
