"""An annotator that answers from ground truth: stands in for a person in tests and benches."""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np

from common.errors import ProtocolError
from simulator.drive import frame_from_id

logger = logging.getLogger(__name__)


class OracleAnnotator:
    """Labels a region of a simulator frame exactly, re-rendering the frame from its id.

    Regions of one frame usually arrive together, so the labels of the last ``cache_size``
    frames are kept.
    """

    def __init__(self, cache_size: int = 32) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self._cache_size = cache_size
        self._labels: OrderedDict[str, np.ndarray] = OrderedDict()

    def label(self, frame_id: str) -> np.ndarray:
        """The full trainId label of a frame (read-only, cached)."""
        label = self._labels.get(frame_id)
        if label is None:
            label = frame_from_id(frame_id).label
            label.setflags(write=False)
            self._labels[frame_id] = label
            if len(self._labels) > self._cache_size:
                self._labels.popitem(last=False)
        else:
            self._labels.move_to_end(frame_id)
        return label

    def label_crop(self, frame_id: str, box: tuple[int, int, int, int]) -> np.ndarray:
        """Ground truth (uint8 trainIds) of ``box`` = (x, y, w, h) in frame pixels."""
        try:
            x, y, w, h = (int(v) for v in box)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"bad box {box!r}: want (x, y, w, h)") from exc
        label = self.label(frame_id)
        height, width = label.shape
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
            raise ProtocolError(f"box {box!r} outside frame {frame_id} ({width}x{height})")
        logger.debug("oracle labels %s box %s", frame_id, box)
        return label[y : y + h, x : x + w].copy()
