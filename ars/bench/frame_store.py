"""Frames and labelled samples as ``.npy`` files in a folder: what the adaptation bench renders
once per run and every row's worker process reads back, instead of rendering it again.

Rendering is deterministic, so a frame read back is the frame rendered, array for array
(``tests/test_adaptation.py`` checks it); the folder lives only as long as the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.files import atomic_writer
from common.samples import LabeledSample
from simulator.scene import Frame

__all__ = ["load_frames", "load_samples", "save_frames", "save_samples"]


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_writer(path, durable=False) as fh:  # a scratch file: read back in this run
        np.save(fh, array)


def _load(path: Path) -> list[np.ndarray]:
    stacked = np.load(path, mmap_mode="r")
    return [np.array(a) for a in stacked]  # owned, writable arrays, as rendering gives


def save_frames(folder: Path, frames: Sequence[Frame]) -> None:
    """Camera frames of one size, with their ground truth, ids and domains."""
    _save(folder / "images.npy", np.stack([f.image for f in frames]))
    _save(folder / "labels.npy", np.stack([f.label for f in frames]))
    meta = [[f.frame_id, f.domain] for f in frames]
    with atomic_writer(folder / "frames.json", durable=False) as fh:
        fh.write(json.dumps(meta).encode())


def load_frames(folder: Path) -> list[Frame]:
    meta = json.loads((folder / "frames.json").read_text())
    images, labels = _load(folder / "images.npy"), _load(folder / "labels.npy")
    return [
        Frame(frame_id=fid, image=img, label=lbl, domain=domain)
        for (fid, domain), img, lbl in zip(meta, images, labels, strict=True)
    ]


def save_samples(folder: Path, samples: Sequence[LabeledSample]) -> None:
    """Labelled samples of one size (an evaluation set)."""
    _save(folder / "images.npy", np.stack([s.image for s in samples]))
    _save(folder / "labels.npy", np.stack([s.label for s in samples]))


def load_samples(folder: Path) -> list[LabeledSample]:
    images, labels = _load(folder / "images.npy"), _load(folder / "labels.npy")
    return [LabeledSample(image=i, label=lbl) for i, lbl in zip(images, labels, strict=True)]
