"""A segmentation network as an ONNX file: input ``image`` (1x3xHxW, normalised like
``models.network.preprocess``), output ``logits`` (1xCxHxW), height and width dynamic.

torch's exporter (``dynamo=True``, which needs onnxscript) writes the opset it targets by
default; the weights are stored inside the one file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from common.errors import ModelError


def export_onnx(model: torch.nn.Module, out: Path, height: int = 240, width: int = 320) -> None:
    """Trace ``model`` on a ``height x width`` example and write ``out`` atomically."""
    example = torch.zeros(1, 3, height, width)
    dims = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        program = torch.onnx.export(
            model.eval().cpu(),
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=(dims,),
            verbose=False,
        )
        if program is None:
            raise ModelError("torch.onnx.export returned no program")
        for i, name in ((2, "height"), (3, "width")):  # readable names for the dynamic axes
            program.model.graph.inputs[0].shape[i] = name  # type: ignore[index]
            program.model.graph.outputs[0].shape[i] = name  # type: ignore[index]
        program.save(tmp, external_data=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except ModelError:
        raise
    except Exception as exc:  # the exporter raises many types
        raise ModelError(f"cannot export the model to ONNX: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
