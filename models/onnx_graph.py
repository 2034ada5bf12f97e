"""The robot's ONNX graph of a segmentation network: one graph, dynamic height and width.

`models.onnx_export.export_onnx` writes the full-resolution graph ``ars export model`` ships;
this one is what the robot runs. It computes the logits the robot uses: ``forward_lowres``
when the model has one (`SegNet`), else ``forward``. Batch norms are folded into their
convolutions first, so the graph holds plain Conv nodes (left as separate nodes, they run 2.7x
slower in onnxruntime), and the exporter's own optimizer is off, so every weight of the graph
keeps the name it has in the folded module's state dict. That is what lets `with_weights`
write another checkpoint of the same architecture into an exported graph in a fraction of a
second, where an export takes tens of seconds on a loaded machine: the robot exports one graph
per architecture and fills in the weights of each model it installs.

``python -m models.onnx_graph --arch ARCH --classes N --out PATH`` exports an untrained
network of that architecture (the robot runs it in a child process: the exporter is Python
work that would otherwise hold the interpreter lock next to the robot's frames).
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path
from typing import Final

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from common.errors import ModelError
from common.files import write_atomic

INPUT: Final = "image"
OUTPUT: Final = "logits"
#: Prefix of every weight name in the graph (the attribute of `_Logits` holding the network).
_PREFIX: Final = "net."


class _Logits(nn.Module):
    """The network's low-resolution logits when it has them, else its plain output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lowres = getattr(self.net, "forward_lowres", None)
        out: torch.Tensor = lowres(x) if callable(lowres) else self.net(x)
        return out


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with each Conv2d+BatchNorm2d pair (consecutive in an
    ``nn.Sequential``, as in MobileNetV3 and the LR-ASPP head) fused into one Conv2d."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return folded


def export_graph(model: nn.Module, height: int = 240, width: int = 320) -> bytes:
    """The serialized ONNX graph of ``model`` (see the module doc), traced at ``height`` x
    ``width`` with both axes dynamic, at the opset of the installed exporter."""
    wrapped = _Logits(fold_batchnorm(model).float().cpu()).eval()
    example = torch.zeros(1, 3, height, width)
    dim = torch.export.Dim.AUTO
    try:
        with warnings.catch_warnings():
            # the exporter and onnxscript warn about their own internals (deprecations)
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapped,
                (example,),
                dynamo=True,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes={"x": {2: dim, 3: dim}},
                optimize=False,  # keep the state-dict names of the weights (see with_weights)
                verbose=False,
                report=False,
            )
    except Exception as exc:  # the exporter raises many types; callers see one
        raise ModelError(f"ONNX export failed: {exc.__class__.__name__}: {exc}") from exc
    if program is None:
        raise ModelError("ONNX export returned no program")
    data: bytes = program.model_proto.SerializeToString()
    return data


def write_graph(model: nn.Module, out: Path, height: int = 240, width: int = 320) -> None:
    """Write `export_graph` of ``model`` to ``out`` atomically (temp file, fsync, rename)."""
    write_atomic(Path(out), export_graph(model, height, width), mode=0o644)


def graph_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The weights of ``model`` under the names `export_graph` gives them in the graph."""
    state = fold_batchnorm(model).float().cpu().state_dict()
    return {_PREFIX + k: v.detach().numpy() for k, v in state.items() if v.is_floating_point()}


def with_weights(graph: bytes, model: nn.Module) -> bytes:
    """``graph`` (exported from a network of ``model``'s architecture) holding ``model``'s
    weights; ModelError when a weight of the graph is missing or has another shape."""
    return fill_weights(graph, graph_weights(model))


def fill_weights(graph: bytes, weights: dict[str, np.ndarray]) -> bytes:
    """`with_weights` in two halves (the robot runs each between two frames): ``weights`` as
    `graph_weights` names them, written into ``graph``."""
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load_from_string(graph)
    except Exception as exc:  # protobuf's DecodeError and others
        raise ModelError(f"ONNX graph does not parse: {exc}") from exc
    for i, init in enumerate(proto.graph.initializer):
        value = weights.get(init.name)
        if value is None:
            raise ModelError(f"ONNX graph weight {init.name!r} is not in the model")
        if tuple(init.dims) != value.shape:
            raise ModelError(
                f"ONNX graph weight {init.name!r}: shape {tuple(init.dims)} != {value.shape}"
            )
        proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, init.name))
    data: bytes = proto.SerializeToString()
    return data


def main(argv: list[str] | None = None) -> int:
    from models.network import ARCHS, build_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--threads", type=int, default=1, help="torch threads while exporting")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    write_graph(build_model(args.arch, args.classes), args.out, args.height, args.width)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
