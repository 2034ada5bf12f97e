"""Checkpoint round trips and every way a checkpoint can be wrong."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from common.classes import CLASS_NAMES
from common.errors import ModelError
from models.checkpoint import (
    checkpoint_bytes,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from models.network import SegNet, build_model


@pytest.fixture
def model() -> SegNet:
    torch.manual_seed(0)
    net = build_model("tiny")
    net.eval()
    return net


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))


def test_fp32_round_trip_is_exact(model: SegNet, tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    meta = save_checkpoint(path, model, arch="tiny", version="v1", metrics={"urban_miou": 0.5})
    loaded, meta2 = load_checkpoint(path, expected_arch="tiny")
    assert meta2 == meta
    assert meta2.classes == CLASS_NAMES and meta2.dtype == "fp32"
    assert meta2.metrics == {"urban_miou": 0.5}
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(_x()), model(_x()))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left


def test_fp16_loads_back_to_fp32(model: SegNet, tmp_path: Path) -> None:
    path = tmp_path / "half.pt"
    save_checkpoint(path, model, arch="tiny", version="v1", dtype="fp16")
    raw = torch.load(path, weights_only=True)
    assert raw["weights"]["classifier.low_classifier.weight"].dtype == torch.float16
    loaded, meta = load_checkpoint(path)
    assert meta.dtype == "fp16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        assert torch.allclose(loaded(_x()), model(_x()), atol=2e-2)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_one_storage_per_type_and_exact_fp32_weights(model: SegNet, dtype: str) -> None:
    data = checkpoint_bytes(model, arch="tiny", version="v1", dtype=dtype)  # type: ignore[arg-type]
    raw = torch.load(io.BytesIO(data), weights_only=True)["weights"]
    storages = {(t.untyped_storage().data_ptr(), t.dtype) for t in raw.values()}
    assert len(storages) == len({t.dtype for t in raw.values()})  # shared: a fast unpickle
    loaded, _ = load_checkpoint(data)
    state = loaded.state_dict()
    assert set(state) == set(raw)
    for name, tensor in raw.items():  # each weight is its own stored value, converted exactly
        expected = tensor.float() if tensor.is_floating_point() else tensor
        assert state[name].dtype == expected.dtype and torch.equal(state[name], expected), name


def test_bytes_round_trip_and_sha_is_deterministic(model: SegNet) -> None:
    data = checkpoint_bytes(model, arch="tiny", version="v2")
    loaded, meta = load_checkpoint(data)
    assert meta.weights_sha256 == weights_sha256(model.state_dict())
    assert meta.weights_sha256 == weights_sha256(loaded.state_dict())
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert weights_sha256(model.state_dict()) != meta.weights_sha256


def test_tampered_weights_fail_the_sha(model: SegNet) -> None:
    raw = torch.load(
        io.BytesIO(checkpoint_bytes(model, arch="tiny", version="v1")), weights_only=True
    )
    raw["weights"]["classifier.low_classifier.bias"][0] += 1.0
    buf = io.BytesIO()
    torch.save(raw, buf)
    with pytest.raises(ModelError, match="sha256"):
        load_checkpoint(buf.getvalue())


def test_flipped_bytes_truncation_and_garbage(model: SegNet) -> None:
    data = bytearray(checkpoint_bytes(model, arch="tiny", version="v1"))
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    with pytest.raises(ModelError):
        load_checkpoint(bytes(data))
    with pytest.raises(ModelError, match="cannot read"):
        load_checkpoint(checkpoint_bytes(model, arch="tiny", version="v1")[:-100])
    with pytest.raises(ModelError, match="cannot read"):
        load_checkpoint(b"not a checkpoint at all")


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weights": {}, "hook": Path("/etc/passwd")}, path)  # not weights-only safe
    with pytest.raises(ModelError, match="cannot read"):
        load_checkpoint(path)


def test_wrong_arch_classes_and_fields(model: SegNet, tmp_path: Path) -> None:
    data = checkpoint_bytes(model, arch="tiny", version="v1")
    with pytest.raises(ModelError, match="does not match expected 'lraspp_mbv3_large'"):
        load_checkpoint(data, expected_arch="lraspp_mbv3_large")
    with pytest.raises(ModelError, match="classes"):
        load_checkpoint(checkpoint_bytes(model, arch="tiny", version="v1", classes=CLASS_NAMES[:5]))
    # weights of a tiny net labelled as another arch: shapes do not fit
    with pytest.raises(ModelError, match="do not fit"):
        load_checkpoint(checkpoint_bytes(model, arch="lraspp_mbv3_small", version="v1"))
    buf = io.BytesIO()
    torch.save({"weights": {}, "arch": "tiny"}, buf)
    with pytest.raises(ModelError, match="lacks"):
        load_checkpoint(buf.getvalue())
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="unknown arch"):
        save_checkpoint(tmp_path / "x.pt", model, arch="resnet", version="v1")
    assert not list(tmp_path.iterdir())


def test_build_into_a_spare_network_or_afresh_when_it_does_not_fit(model: SegNet) -> None:
    from models.checkpoint import build_from, read_checkpoint

    weights, meta = read_checkpoint(checkpoint_bytes(model, arch="tiny", version="v1"))
    spare = build_model("tiny")
    built = build_from(weights, meta, reuse=spare)
    assert built is spare and not built.training
    with torch.no_grad():
        assert torch.equal(built(_x()), model(_x()))
    other = build_model("tiny", num_classes=5)  # same arch, other classes: not reusable
    fresh = build_from(weights, meta, reuse=other)
    assert fresh is not other
    with torch.no_grad():
        assert torch.equal(fresh(_x()), model(_x()))
