"""The robot's models on disk: ``current.pt``, ``previous.pt`` and a small JSON pointer.

Every write is a temp file plus ``os.replace``, so a crash leaves either the old or the new
file, never half of one. On start the robot loads the last good model: ``current.pt`` if it
loads and matches the pointer's SHA-256, else ``previous.pt``, else the configured checkpoint
(``robot.model`` or the shipped base).

Methods block (disk, torch): call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from common.errors import ModelError, StorageError
from common.files import atomic_writer, write_atomic
from common.hashing import sha256_bytes
from models.checkpoint import load_checkpoint
from robot_agent.inference import LoadedModel

logger = logging.getLogger(__name__)


def load_verified(path: Path, device: str, expected_sha256: str | None = None) -> LoadedModel:
    """Load a checkpoint file, checking its file SHA-256 first when one is expected."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from exc
    sha = sha256_bytes(data)
    if expected_sha256 and sha != expected_sha256:
        raise ModelError(
            f"checkpoint {path}: SHA-256 {sha[:12]}... != recorded {expected_sha256[:12]}..."
        )
    model, meta = load_checkpoint(data, device=device)
    return LoadedModel(model=model, meta=meta, sha256=sha, path=path)


class ModelFiles:
    """current/previous checkpoints under ``root`` and the pointer describing them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.current = root / "current.pt"
        self.previous = root / "previous.pt"
        self.pointer = root / "pointer.json"
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".incoming-*.part"):  # a transfer cut short by a restart
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"model folder {root}: {exc}") from exc

    def incoming(self, version: str, encoding: str) -> Path:
        """Where a payload being received is written (beside current.pt: one rename away)."""
        return self.root / f".incoming-{version}.{encoding}.part"

    def read_pointer(self) -> dict[str, Any]:
        try:
            data = json.loads(self.pointer.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _recorded_sha(self, slot: str) -> str | None:
        entry = self.read_pointer().get(slot)
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
            return str(entry["sha256"])
        return None

    def _write_pointer(self, current: LoadedModel | None, previous: dict[str, Any] | None) -> None:
        body = {
            "current": current.ref().model_dump(mode="json") if current else None,
            "previous": previous,
        }
        write_atomic(self.pointer, json.dumps(body, indent=2).encode())

    def has_previous(self) -> bool:
        return self.previous.exists()

    def previous_info(self) -> dict[str, Any] | None:
        entry = self.read_pointer().get("previous")
        return entry if isinstance(entry, dict) and self.previous.exists() else None

    # --- start-up ----------------------------------------------------------------------------
    def load_last_good(self, fallback: Path, device: str) -> LoadedModel:
        """current.pt, else previous.pt, else ``fallback``; ModelError if none loads."""
        errors: list[str] = []
        for path, slot in ((self.current, "current"), (self.previous, "previous")):
            if not path.exists():
                continue
            recorded = self._recorded_sha(slot)
            accepted = {recorded} if recorded else set()
            if slot == "previous" and recorded:
                # an install cut short after moving current.pt to previous.pt, before the
                # pointer was rewritten: the file is the pointer's "current" (the last good one)
                accepted.add(self._recorded_sha("current") or recorded)
            try:
                loaded = load_verified(path, device)
                if accepted and loaded.sha256 not in accepted:
                    raise ModelError(
                        f"checkpoint {path}: SHA-256 {loaded.sha256[:12]}... is not recorded"
                    )
            except ModelError as exc:
                logger.warning("robot model %s is not usable: %s", path, exc)
                errors.append(f"{path.name}: {exc}")
                continue
            logger.info("robot model: %s version %s", path.name, loaded.version)
            return loaded
        try:
            return load_verified(fallback, device)
        except ModelError as exc:
            errors.append(f"{fallback}: {exc}")
            raise ModelError("no usable model: " + "; ".join(errors)) from exc

    # --- updates -----------------------------------------------------------------------------
    def install(self, data: bytes, new: LoadedModel, running: LoadedModel) -> LoadedModel:
        """``data`` becomes current.pt, the running model previous.pt; returns ``new`` there."""
        try:
            with atomic_writer(self.current) as fh:
                fh.write(data)  # on disk before the running model moves to previous.pt
                self._keep_as_previous(running)
            self._write_pointer(new, running.ref().model_dump(mode="json"))
        except OSError as exc:
            raise StorageError(f"cannot persist model {new.version}: {exc}") from exc
        return dataclasses.replace(new, path=self.current)

    def install_file(self, path: Path, new: LoadedModel, running: LoadedModel) -> LoadedModel:
        """``path`` (a received checkpoint, already flushed) becomes current.pt by one rename,
        the running model previous.pt; returns ``new`` there."""
        try:
            self._keep_as_previous(running)
            os.replace(path, self.current)
            self._write_pointer(new, running.ref().model_dump(mode="json"))
        except OSError as exc:
            raise StorageError(f"cannot persist model {new.version}: {exc}") from exc
        return dataclasses.replace(new, path=self.current)

    def _keep_as_previous(self, running: LoadedModel) -> None:
        if running.path == self.previous:
            return
        if running.path == self.current and self.current.exists():
            os.replace(self.current, self.previous)
            return
        if running.path is None or not running.path.exists():
            raise StorageError("the running model has no file to keep as previous")
        with atomic_writer(self.previous) as fh, running.path.open("rb") as src:
            shutil.copyfileobj(src, fh)

    def load_previous(self, device: str) -> LoadedModel:
        if not self.previous.exists():
            raise ModelError("no previous model to roll back to")
        return load_verified(self.previous, device, self._recorded_sha("previous"))

    def rollback(self, previous: LoadedModel, running: LoadedModel) -> LoadedModel:
        """Exchange current.pt and previous.pt, one rename per step; ``previous`` runs next."""
        swap = self.root / ".rollback.pt"
        try:
            kept = False
            if running.path == self.current and self.current.exists():
                os.replace(self.current, swap)
                kept = True
            elif running.path not in (None, self.previous) and running.path.exists():
                shutil.copyfile(running.path, swap)
                kept = True
            os.replace(self.previous, self.current)
            if kept:
                os.replace(swap, self.previous)
            self._write_pointer(previous, running.ref().model_dump(mode="json") if kept else None)
        except OSError as exc:
            raise StorageError(f"cannot roll back on disk: {exc}") from exc
        return dataclasses.replace(previous, path=self.current)
