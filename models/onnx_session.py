"""An onnxruntime session standing in for a `SegNet`, checked against the torch model.

The check runs both on one probe frame and compares their low-resolution logits: the exported
graph, the weights written into it and onnxruntime's own graph rewrites are all covered by it.
"""

from __future__ import annotations

import importlib.util
from typing import Final

import numpy as np
import torch

from common.errors import ModelError
from models.network import SegNet, preprocess
from models.onnx_graph import INPUT, OUTPUT

#: Largest absolute logit difference between onnxruntime and torch on the probe frame.
PROBE_TOLERANCE: Final = 1e-3


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def probe_frame(size_hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A fixed noise frame: every logit path is exercised (a blank frame would leave most of
    the network's nonlinearities in one regime)."""
    return np.random.default_rng(seed).integers(0, 256, (*size_hw, 3), dtype=np.uint8)


class OnnxModel:
    """An onnxruntime session computing a `SegNet`'s ``forward_lowres``."""

    def __init__(self, graph: bytes, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # busy-waiting worker threads would take the core the candidate store runs on
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise ModelError(f"onnxruntime cannot load the graph: {exc}") from exc

    def forward_lowres(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float32 -> (N, C, h, w) logits, as `SegNet.forward_lowres`."""
        array = x.detach().cpu().contiguous().numpy()
        out = self.session.run([OUTPUT], {INPUT: array})[0]
        return torch.from_numpy(np.asarray(out))


def probe_difference(onnx_model: OnnxModel, model: SegNet, size_hw: tuple[int, int]) -> float:
    """Largest absolute logit difference between ``onnx_model`` and ``model`` on the probe."""
    device = next(model.parameters()).device
    x = preprocess(probe_frame(size_hw))
    with torch.inference_mode():
        expected = model.forward_lowres(x.to(device)).float().cpu()
    got = onnx_model.forward_lowres(x)
    if got.shape != expected.shape:
        raise ModelError(f"onnxruntime logits {tuple(got.shape)} != torch {tuple(expected.shape)}")
    return float((got - expected).abs().max())


def checked_session(
    graph: bytes, model: SegNet, size_hw: tuple[int, int], threads: int
) -> OnnxModel:
    """Build the session for ``graph`` and check it against ``model``; ModelError if off."""
    return check_against(OnnxModel(graph, threads), model, size_hw)


def check_against(onnx_model: OnnxModel, model: SegNet, size_hw: tuple[int, int]) -> OnnxModel:
    """``onnx_model`` if its logits on the probe frame are within `PROBE_TOLERANCE` of
    ``model``'s, else ModelError."""
    try:
        diff = probe_difference(onnx_model, model, size_hw)
    except ModelError:
        raise
    except Exception as exc:  # onnxruntime's run errors
        raise ModelError(f"onnxruntime failed on the probe frame: {exc}") from exc
    if not diff <= PROBE_TOLERANCE:  # also refuses NaN
        raise ModelError(
            f"onnxruntime logits differ from torch by {diff:.3g} (> {PROBE_TOLERANCE:g})"
        )
    return onnx_model
