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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, random crop (padding image with 0 and mask with 255), random h-flip.

    `image` is 3xHxW float (already normalised, so 0 pads with the mean colour), `label` HxW.
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
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    image, label = image[:, y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]
    if flip and rng.random() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image, label


#: The strongest colour cast: gains 0.1-1.9; past it a gain below 0 would flip a channel.
MAX_CAST = 3.0


def colour_cast(image: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """A random colour cast on a 3xHxW float image in [0, 1]: each channel x U(1 - 0.3 s,
    1 + 0.3 s), the gains scaled to a mean of 1 so the brightness stays, s = `strength`.

    Why: the robot labels a few regions of the stretches it drove, and the route ahead can have
    a light it never drove in. Under a dusk light no driven stretch showed, the model took the
    sky for a building on 6-12 % of the pixels however many driven frames were labelled
    (``docs/adaptation.md``, *Known limits*); a cast lets each labelled region stand for other
    lights. Measured on 7 route seeds it pays where the light ahead is new and costs where
    colour is what tells a dirt track from grass, so ``server.colour_cast`` is 0 (off) by
    default (*What was tried*). Strength 0..``MAX_CAST``."""
    if not 0 <= strength <= MAX_CAST:
        raise ValueError(f"colour cast strength {strength} is outside 0..{MAX_CAST:g}")
    if strength == 0:
        return image
    gain = torch.from_numpy(rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength, size=3)).float()
    gain = gain / gain.mean()
    return (image * gain.view(3, 1, 1)).clamp(0.0, 1.0)
