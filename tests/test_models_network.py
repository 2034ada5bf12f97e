"""Network shapes, preprocessing, prediction and paired transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import ModelError
from common.samples import resize_sample
from models.data import region_training_sample
from models.network import ARCHS, MEAN, STD, build_model, predict, preprocess
from models.transforms import random_pair


@pytest.mark.parametrize("arch", ARCHS)
def test_lowres_is_stride_8_and_forward_upsamples(arch: str) -> None:
    torch.manual_seed(0)
    net = build_model(arch).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        low = net.forward_lowres(x)
        full = net(x)
    assert low.shape == (1, 19, 8, 12)
    assert full.shape == (1, 19, 64, 96)
    up = torch.nn.functional.interpolate(low, size=(64, 96), mode="bilinear", align_corners=False)
    assert torch.allclose(full, up)


def test_sizes_and_no_download() -> None:
    counts = {a: sum(p.numel() for p in build_model(a).parameters()) for a in ARCHS}
    assert counts["tiny"] < 50_000
    assert 3_000_000 < counts["lraspp_mbv3_large"] < 3_500_000
    assert counts["lraspp_mbv3_small"] < counts["lraspp_mbv3_large"]
    with pytest.raises(ModelError, match="unknown arch"):
        build_model("resnet")


def test_large_matches_torchvision_state_dict_layout() -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    ref = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=19)
    ours = build_model("lraspp_mbv3_large")
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }


def test_preprocess_normalises_and_resizes() -> None:
    img = np.zeros((4, 6, 3), dtype=np.uint8)
    img[..., 0] = 255
    x = preprocess(img)
    assert x.shape == (1, 3, 4, 6) and x.dtype == torch.float32
    assert float(x[0, 0, 0, 0]) == pytest.approx((1 - MEAN[0]) / STD[0], rel=1e-5)
    assert float(x[0, 1, 0, 0]) == pytest.approx(-MEAN[1] / STD[1], rel=1e-5)
    batch = preprocess([img, img], size=(8, 12))
    assert batch.shape == (2, 3, 8, 12)
    ro = img.copy()
    ro.flags.writeable = False
    assert torch.equal(preprocess(ro), x)
    with pytest.raises(ValueError, match="HxWx3"):
        preprocess(np.zeros((4, 6), dtype=np.uint8))


def test_predict_returns_mask_at_image_size() -> None:
    net = build_model("tiny").eval()
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    pred = predict(net, img, size=(32, 40))
    assert pred.mask.shape == (48, 64) and pred.mask.dtype == np.uint8
    assert pred.lowres_logits.shape == (19, 4, 5)
    assert int(pred.mask.max()) < 19


def test_paired_transforms_keep_image_and_mask_aligned() -> None:
    rng = np.random.default_rng(3)
    label = rng.integers(0, 19, (30, 40)).astype(np.int64)
    image = torch.from_numpy(label).float()[None].repeat(3, 1, 1)  # the image encodes the label
    flips = 0
    for _ in range(20):
        img, lbl = random_pair(image, torch.from_numpy(label), (36, 24), rng)
        assert img.shape == (3, 36, 24) and lbl.shape == (36, 24)
        valid = lbl != 255
        assert valid.sum() == 30 * 24  # 6 rows of padding
        assert torch.equal(img[0][valid], lbl[valid].float())  # crop and flip moved both alike
        assert (img[0][~valid] == 0).all()
        flips += int(not torch.equal(lbl[valid], torch.from_numpy(label)[:, :24].reshape(-1)))
    assert flips > 0
    for _ in range(5):
        img, lbl = random_pair(image, torch.from_numpy(label), (20, 20), rng, scale=(0.5, 1.5))
        assert set(torch.unique(lbl).tolist()) <= {*range(19), 255}  # NEAREST: no blends
    img, lbl = random_pair(image, torch.from_numpy(label), (30, 40), rng, flip=False)
    assert torch.equal(lbl, torch.from_numpy(label))
    assert torch.equal(img[0], image[0])


def test_region_training_sample_follows_the_protocol_rule() -> None:
    """A 4x2 crop at (8, 4) of a 16x8 frame, trained at 8x4 (scale 0.5): 2x1 at (4, 2)."""
    crop = np.zeros((2, 4, 3), dtype=np.uint8)
    crop[:, :2] = (200, 100, 0)  # left half
    crop[:, 2:] = (0, 100, 200)  # right half
    label = np.array([[1, 1, 2, 2], [1, 1, 2, 2]], dtype=np.uint8)
    sample = region_training_sample(crop, label, (8, 4, 4, 2), (16, 8), (4, 8))
    assert sample.image.shape == (4, 8, 3) and sample.label.shape == (4, 8)
    expected = np.full((4, 8), 255, dtype=np.uint8)
    expected[2, 4:6] = [1, 2]
    assert np.array_equal(sample.label, expected)
    # outside the region: the crop's mean colour
    assert sample.image[0, 0].tolist() == [100, 100, 100]
    assert int((sample.label != 255).sum()) == 2


def test_resize_sample_keeps_a_sample_at_its_size() -> None:
    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    label = np.full((48, 64), 7, dtype=np.uint8)
    assert resize_sample(frame, label, (48, 64)).label is label
    small = resize_sample(frame, label, (24, 32))
    assert small.image.shape == (24, 32, 3) and (small.label == 7).all()
