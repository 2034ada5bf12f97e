"""ONNX graphs: one for every frame size, the same logits as torch, weights swapped in; and
`export_onnx`'s full-resolution file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import ModelError
from models.network import SegNet, build_model, preprocess
from models.onnx_export import export_onnx
from models.onnx_graph import fold_batchnorm, with_weights, write_graph
from models.onnx_session import OnnxModel, checked_session, probe_difference, probe_frame


def tiny(seed: int, classes: int = 19) -> SegNet:
    torch.manual_seed(seed)
    model = build_model("tiny", classes).eval()
    # running statistics away from (0, 1), so folding the batch norms changes the weights
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the robot's graph of the tiny net (seed 0), exported once."""
    folder = tmp_path_factory.mktemp("onnx")
    write_graph(tiny(0), folder / "tiny.onnx", height=60, width=80)
    return folder


@pytest.fixture(scope="module")
def graph(graph_dir: Path) -> bytes:
    return (graph_dir / "tiny.onnx").read_bytes()


def torch_logits(model: SegNet, image: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model.forward_lowres(preprocess(image))


def test_folding_batchnorm_keeps_the_logits() -> None:
    model = tiny(0)
    image = probe_frame((48, 64))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy
    diff = (torch_logits(folded, image) - torch_logits(model, image)).abs().max()  # type: ignore[arg-type]
    assert float(diff) < 1e-5


def test_export_runs_any_frame_size_with_torchs_logits(graph: bytes) -> None:
    model = tiny(0)
    session = OnnxModel(graph, threads=1)
    for hw in ((60, 80), (120, 160), (50, 90)):  # the traced size, larger, and odd
        image = probe_frame(hw, seed=hw[0])
        expected = torch_logits(model, image)
        got = session.forward_lowres(preprocess(image))
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-4


def test_with_weights_gives_another_checkpoints_logits(graph: bytes) -> None:
    other = tiny(1)
    before = probe_difference(OnnxModel(graph, 1), other, (60, 80))
    assert before > 1e-2  # the exported weights are seed 0's, not this model's
    session = checked_session(with_weights(graph, other), other, (60, 80), threads=1)
    assert probe_difference(session, other, (60, 80)) < 1e-4


def test_a_graph_of_another_shape_or_garbage_is_refused(graph: bytes) -> None:
    with pytest.raises(ModelError, match="shape"):
        with_weights(graph, tiny(0, classes=5))
    with pytest.raises(ModelError, match="is not in the model"):
        with_weights(graph, build_model("lraspp_mbv3_small"))
    with pytest.raises(ModelError, match="does not parse"):
        with_weights(b"not a graph", tiny(0))
    with pytest.raises(ModelError, match="differ from torch"):
        checked_session(graph, tiny(1), (60, 80), threads=1)  # seed 0's weights, seed 1's net


def test_write_graph_writes_only_its_file(graph: bytes, graph_dir: Path) -> None:
    assert [p.name for p in graph_dir.iterdir()] == ["tiny.onnx"]  # no temp file left
    assert graph_dir.joinpath("tiny.onnx").read_bytes() == graph


def test_export_onnx_full_resolution_file(tmp_path: Path) -> None:
    model = tiny(2)
    export_onnx(model, tmp_path / "m.onnx", height=48, width=64)
    session = OnnxModel((tmp_path / "m.onnx").read_bytes(), threads=1)
    for hw in ((48, 64), (60, 100)):
        x = preprocess(probe_frame(hw))
        with torch.inference_mode():
            expected = model(x)  # forward: logits at the input size
        got = torch.from_numpy(session.session.run(None, {"image": x.numpy()})[0])
        assert got.shape == expected.shape == (1, 19, *hw)
        assert float((got - expected).abs().max()) < 1e-4
