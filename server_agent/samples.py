"""The store's annotated regions as training samples, decoded on access.

Each becomes a sample by the one rule, ``models.data.region_training_sample``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, overload

from common.images import decode_mask, decode_rgb
from common.samples import LabeledSample
from models.data import region_training_sample

if TYPE_CHECKING:
    from server_agent.store import RegionRow, Store


class RegionSamples(Sequence[LabeledSample]):
    """Labeled regions as training samples, read and decoded from the store on access.

    A fine-tune job holds only the rows, so its memory stays flat however many regions have
    been labeled (decoded, each is a train-size canvas: ~300 KB at 320x240).
    """

    def __init__(self, store: Store, rows: Sequence[RegionRow], train_hw: tuple[int, int]):
        self.store = store
        self.rows = list(rows)
        self.train_hw = train_hw

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> LabeledSample: ...
    @overload
    def __getitem__(self, index: slice) -> list[LabeledSample]: ...
    def __getitem__(self, index: int | slice) -> LabeledSample | list[LabeledSample]:
        if isinstance(index, slice):
            return [self._load(row) for row in self.rows[index]]
        return self._load(self.rows[index])

    def _load(self, row: RegionRow) -> LabeledSample:
        crop_png, _, ann_png = self.store.read_region(row)
        crop = decode_rgb(crop_png, what=f"region {row.region_id} crop")
        label = decode_mask(ann_png, what=f"region {row.region_id} annotation")
        return region_training_sample(crop, label, row.box, row.frame_size, self.train_hw)
