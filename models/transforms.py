"""Paired image/mask transforms on tensors: scale, crop, flip. Masks use NEAREST, pad with 255."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.classes import IGNORE


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """HxWx3 uint8 + HxW uint8 -> 3xHxW uint8 and HxW uint8 tensors (own copies)."""
    img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return img, torch.from_numpy(np.array(label, dtype=np.uint8))


def resize_pair(
    image: torch.Tensor, label: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize 3xHxW float image (bilinear, antialiased) and HxW mask (nearest) to (h, w)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, label
    img = F.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )
    lbl = F.interpolate(label[None, None].float(), size=size, mode="nearest")
    return img[0], lbl[0, 0].to(label.dtype)


def random_pair(
    image: torch.Tensor,
    label: torch.Tensor,
    crop: tuple[int, int],
    rng: np.random.Generator,
    scale: tuple[float, float] = (1.0, 1.0),
    flip: bool = True,
    on_labels: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, random crop (padding image with 0 and mask with 255), random h-flip.

    `image` is 3xHxW float (already normalised, so 0 pads with the mean colour), `label` HxW.
    With `on_labels` the crop is drawn on the labelled pixels' bounding box (inside it when
    the box is larger than the crop, around it when smaller): a labelled region on a
    whole-frame canvas trains in a crop of its own size instead of a frame of mostly ignored
    pixels.
    """
    h, w = image.shape[-2:]
    s = float(rng.uniform(*scale)) if scale[0] != scale[1] else scale[0]
    if s != 1.0:
        image, label = resize_pair(image, label, (max(1, round(h * s)), max(1, round(w * s))))
        h, w = image.shape[-2:]
    ch, cw = crop
    if h < ch or w < cw:
        ph, pw = max(0, ch - h), max(0, cw - w)
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        label = F.pad(label, (0, pw, 0, ph), value=IGNORE)
        h, w = image.shape[-2:]
    box = labeled_box(label) if on_labels else None
    if box is None:
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
    else:
        y = _origin(box[0], box[1], ch, h, rng)
        x = _origin(box[2], box[3], cw, w, rng)
    image, label = image[:, y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]
    if flip and rng.random() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image, label


def labeled_box(label: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), bottom and right exclusive, of the pixels not IGNORE."""
    valid = label != IGNORE
    rows = valid.any(dim=1).nonzero()
    if rows.numel() == 0:
        return None
    cols = valid.any(dim=0).nonzero()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _origin(lo: int, hi: int, crop: int, size: int, rng: np.random.Generator) -> int:
    """A crop origin on one axis: the crop inside [lo, hi) when it fits there, else covering
    it, and always inside [0, size)."""
    if hi - lo >= crop:
        first, last = lo, hi - crop
    else:
        first, last = hi - crop, lo
    first, last = max(0, first), min(size - crop, last)
    return int(rng.integers(first, max(first, last) + 1))
