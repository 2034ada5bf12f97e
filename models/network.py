"""Segmentation networks: LR-ASPP MobileNetV3 (Large, Small) and a tiny net for tests.

`SegNet` keeps torchvision's LR-ASPP attribute names (`backbone`, `classifier`), so a real
19-class torchvision LR-ASPP state dict loads into it unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.lraspp import LRASPPHead

from common.classes import NUM_CLASSES
from common.errors import ModelError

ARCHS: Final = ("lraspp_mbv3_large", "lraspp_mbv3_small", "tiny")
# ImageNet statistics, as torchvision's segmentation references use.
MEAN: Final = (0.485, 0.456, 0.406)
STD: Final = (0.229, 0.224, 0.225)


class SegNet(nn.Module):
    """A backbone returning {"low", "high"} features and an LR-ASPP-style head."""

    def __init__(self, arch: str, backbone: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.arch = arch
        self.backbone = backbone
        self.classifier = classifier

    def forward_lowres(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the head's own resolution (about 1/8): the robot computes entropy here."""
        features = self.backbone(x)
        out: torch.Tensor = self.classifier(features)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits upsampled (bilinear) to the input resolution, (N, C, H, W)."""
        low = self.forward_lowres(x)
        return F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _lraspp_from_features(features: nn.Sequential, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Mirror torchvision's `_lraspp_mobilenetv3`: low = C2 (stride 8), high = last block."""
    stage_indices = (
        [0]
        + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
        + [len(features) - 1]
    )
    low_pos = stage_indices[-4]
    high_pos = stage_indices[-1]
    low_channels = int(getattr(features[low_pos], "out_channels"))  # noqa: B009
    high_channels = int(getattr(features[high_pos], "out_channels"))  # noqa: B009
    backbone = IntermediateLayerGetter(
        features, return_layers={str(low_pos): "low", str(high_pos): "high"}
    )
    return backbone, LRASPPHead(low_channels, high_channels, num_classes, 128)


class _TinyBackbone(nn.Module):
    """Four strided convs (output stride 8 for "low", 16 for "high"): tests only."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(block(3, 8), block(8, 16), block(16, 24))
        self.deep = block(24, 32)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.stem(x)
        return OrderedDict(low=low, high=self.deep(low))


def build_model(arch: str = "lraspp_mbv3_large", num_classes: int = NUM_CLASSES) -> SegNet:
    """Build an untrained network; never downloads weights."""
    if arch == "lraspp_mbv3_large":
        features = mobilenet_v3_large(weights=None, dilated=True).features
    elif arch == "lraspp_mbv3_small":
        features = mobilenet_v3_small(weights=None, dilated=True).features
    elif arch == "tiny":
        return SegNet(arch, _TinyBackbone(), LRASPPHead(24, 32, num_classes, 16))
    else:
        raise ModelError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    backbone, head = _lraspp_from_features(features, num_classes)
    return SegNet(arch, backbone, head)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def preprocess(
    images: np.ndarray | list[np.ndarray], size: tuple[int, int] | None = None
) -> torch.Tensor:
    """HxWx3 uint8 RGB (one or a list) -> normalised float32 NCHW, resized to (height, width)."""
    batch = np.stack(images) if isinstance(images, list) else images
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected HxWx3 images, got shape {batch.shape}")
    batch = np.ascontiguousarray(batch)
    if not batch.flags.writeable:  # torch warns on read-only arrays; frames may be frozen
        batch = batch.copy()
    x = torch.from_numpy(batch).permute(0, 3, 1, 2)  # a channels-last view, no copy
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        # resized as uint8: torch's channels-last uint8 kernel is ~9x faster than the float one
        # (640x480 to 320x240: 5.5 vs 49 ms under load), and differs by rounding to whole levels
        # (what a camera at the smaller size would deliver anyway)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    x = x.float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass(frozen=True)
class Prediction:
    """Class mask at the image size and the low-resolution logits it came from."""

    mask: np.ndarray
    lowres_logits: torch.Tensor


def predict(model: SegNet, image: np.ndarray, size: tuple[int, int] | None = None) -> Prediction:
    """Infer one HxWx3 uint8 frame (optionally at `size`); the mask comes back at the frame size."""
    h, w = image.shape[:2]
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = preprocess(image, size).to(device)
        low = model.forward_lowres(x)
        logits = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        mask = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
    return Prediction(mask=mask, lowres_logits=low[0].float().cpu())
