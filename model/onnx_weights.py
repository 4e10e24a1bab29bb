"""Read an exported SRNet's weights back out of its ONNX file.

Training checkpoints are not committed, so the shipped ``export/models/*.onnx``
files are the only copy of the trained weights a fresh clone has. This turns
one back into a PyTorch state dict, so ``python -m model.train --init
export/models/fast_x3.onnx`` can fine-tune a shipped model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from model.network import SRNet

__all__ = ["weights_from_onnx"]


def weights_from_onnx(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Constructor arguments and state dict of the fp32 SRNet exported to ``path``.

    Layers are matched by order: the i-th ``Conv``/``ConvTranspose`` node is the
    i-th learned convolution of the network, the i-th ``PRelu``/``LeakyRelu``
    node its i-th ``nn.PReLU``. (Names do not survive export reliably: equal
    constants are merged and all-zero biases dropped.)
    The fixed bicubic skip is left out; the constructor rebuilds it (see
    ``model.network.load_weights``).
    """
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    if "config" not in meta:
        raise ValueError(f"{path} has no 'config' metadata; it was not exported by export.to_onnx")
    config = json.loads(meta["config"])
    net = SRNet(**config)
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}

    def modules(kind: type | tuple[type, ...]) -> list[str]:
        return [n for n, m in net.named_modules() if isinstance(m, kind) and not n.startswith("skip")]

    def nodes(*ops: str) -> list[onnx.NodeProto]:
        return [n for n in model.graph.node if n.op_type in ops and not n.input[1:2] == ["skip.phases.weight"]]

    state: dict[str, torch.Tensor] = {}
    for name, node in _pair(path, modules((torch.nn.Conv2d, torch.nn.ConvTranspose2d)), nodes("Conv", "ConvTranspose")):
        state[f"{name}.weight"] = _tensor(consts[node.input[1]])
        bias = consts[node.input[2]] if len(node.input) > 2 else 0  # the exporter drops all-zero biases
        state[f"{name}.bias"] = _tensor(np.broadcast_to(bias, net.get_submodule(name).bias.shape))
    for name, node in _pair(path, modules(torch.nn.PReLU), nodes("PRelu", "LeakyRelu")):
        if node.op_type == "PRelu":
            slope = consts[node.input[1]].reshape(-1)
        else:
            slope = np.array([next(a.f for a in node.attribute if a.name == "alpha")])
        state[f"{name}.weight"] = _tensor(slope)
    return config, state


def _pair(path: str | Path, names: list[str], nodes: list[onnx.NodeProto]) -> zip:
    if len(names) != len(nodes):
        raise ValueError(
            f"{path}: {len(nodes)} {nodes[0].op_type if nodes else ''} nodes, the network has {len(names)}"
        )
    return zip(names, nodes, strict=True)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32))
