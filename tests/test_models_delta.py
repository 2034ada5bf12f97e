"""Model deltas on the tiny net: bit-exact rebuild, only changed tensors, refusals."""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pytest
import torch

from common.envelope import decode, encode
from models.checkpoint import CheckpointMeta, read_checkpoint, weights_of, weights_sha256
from models.checkpoint import checkpoint_bytes as to_bytes
from models.delta import DeltaError, apply_delta, encode_delta, read_header
from models.network import SegNet, build_model
from models.training import LabeledSample, finetune


def samples(n: int = 4) -> list[LabeledSample]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        label = rng.integers(0, 3, size=(32, 48), dtype=np.uint8)
        image = (label[..., None] * np.array([80, 40, 20], dtype=np.uint8)).astype(np.uint8)
        out.append(LabeledSample(image=image, label=label))
    return out


def finetuned_pair(seed: int = 0, iterations: int = 3) -> tuple[SegNet, SegNet]:
    """A tiny parent and a copy fine-tuned as the server does (first block frozen, BN fixed)."""
    torch.manual_seed(seed)
    parent = build_model("tiny").eval()
    child = copy.deepcopy(parent)
    finetune(child, samples(), [], iterations=iterations, lr=0.05, frozen_blocks=1, size=(32, 48))
    return parent, child


def checkpoint(
    model: SegNet, version: str, dtype: str = "fp16"
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    data = to_bytes(
        model, arch="tiny", version=version, dtype="fp16" if dtype == "fp16" else "fp32"
    )
    return read_checkpoint(data)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_delta_rebuilds_the_exact_weights_and_holds_only_changed_tensors(dtype: str) -> None:
    parent_model, child_model = finetuned_pair()
    parent, pmeta = checkpoint(parent_model, "p1", dtype)
    child, cmeta = checkpoint(child_model, "c1", dtype)
    data = encode_delta(parent, pmeta, child, cmeta)
    header, _ = read_header(data)
    listed = {e.name for e in header.tensors}
    # frozen first block and every BatchNorm statistic are bit-identical: not sent
    assert not any(n.startswith("backbone.stem.") for n in listed)
    assert not any("running_" in n or "num_batches" in n for n in listed)
    changed = {n for n in child if not torch.equal(child[n], parent[n])}
    assert listed == changed and changed
    assert all(e.op == "add" for e in header.tensors)
    # the robot's parent: the running fp32 model, converted back to the checkpoint's dtype
    rebuilt, meta = apply_delta(weights_of(parent_model, dtype), pmeta, data)
    assert weights_sha256(rebuilt) == cmeta.weights_sha256 == meta.weights_sha256
    assert all(
        torch.equal(
            rebuilt[n].reshape(-1).view(torch.uint8), child[n].reshape(-1).view(torch.uint8)
        )
        for n in child
    )
    assert meta.version == "c1" and meta.dtype == dtype


def test_new_and_reshaped_tensors_travel_raw() -> None:
    parent_model, child_model = finetuned_pair(iterations=1)
    parent, pmeta = checkpoint(parent_model, "p1")
    child, cmeta = checkpoint(child_model, "c1")
    child = dict(child)
    child["extra.weight"] = torch.arange(6, dtype=torch.float16).reshape(2, 3)
    name = next(n for n in child if n.endswith("num_batches_tracked"))
    child[name] = child[name] + 7
    gone = next(n for n in parent if n.startswith("backbone.stem.") and n.endswith("weight"))
    del child[gone]
    cmeta = CheckpointMeta(**{**cmeta.__dict__, "weights_sha256": weights_sha256(child)})
    data = encode_delta(parent, pmeta, child, cmeta)
    header, _ = read_header(data)
    ops = {e.name: e.op for e in header.tensors}
    assert ops["extra.weight"] == "raw" and ops[name] == "raw" and header.drop == [gone]
    rebuilt, _ = apply_delta(parent, pmeta, data)
    assert weights_sha256(rebuilt) == weights_sha256(child)


def test_a_corrupt_delta_or_another_parent_is_refused() -> None:
    parent_model, child_model = finetuned_pair()
    parent, pmeta = checkpoint(parent_model, "p1")
    child, cmeta = checkpoint(child_model, "c1")
    data = encode_delta(parent, pmeta, child, cmeta)
    env = decode(data, max_bytes=len(data))
    diff = bytearray(zlib.decompress(env.parts[0]))
    diff[0] ^= 0x01  # one bit of one weight, the envelope otherwise intact
    bad = encode(env.header, [zlib.compress(bytes(diff)), env.parts[1]])
    with pytest.raises(DeltaError, match="SHA-256"):
        apply_delta(parent, pmeta, bad)
    tweaked = copy.deepcopy(parent_model)
    with torch.no_grad():
        next(iter(tweaked.parameters()))[0].add_(1.0)
    other, ometa = checkpoint(tweaked, "p1")
    with pytest.raises(DeltaError, match="weights"):
        apply_delta(other, ometa, data)
    with pytest.raises(DeltaError, match="from p1"):
        apply_delta(parent, CheckpointMeta(**{**pmeta.__dict__, "version": "p0"}), data)
    with pytest.raises(DeltaError, match="not a model delta"):
        apply_delta(parent, pmeta, b"garbage")
