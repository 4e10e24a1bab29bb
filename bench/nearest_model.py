"""A near-free model with the shipped models' interface: nearest-neighbour x2 through a transposed convolution.

Served in place of a network, it measures the service's own ceiling: what HTTP,
decoding, tiling, batching and encoding allow when inference costs almost
nothing (nearly the case on a large GPU, where the engine alone runs at over
a gigapixel per second, bench/results/gpu.json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["write_nearest_model"]


def write_nearest_model(folder: Path, scale: int = 2) -> Path:
    """Write ``nearest_x<scale>.onnx`` (context 1, dynamic N/H/W) into ``folder`` and return its path."""
    context = 1
    weight = np.ones((3, 1, scale, scale), np.float32)  # one channel per group: each pixel copied s x s times
    upsample = {"group": 3, "kernel_shape": [scale, scale], "strides": [scale, scale]}
    nodes = [
        helper.make_node("Slice", ["lr", "starts", "ends", "axes"], ["core"]),  # drop the context
        helper.make_node("ConvTranspose", ["core", "w"], ["sr"], **upsample),
    ]
    inits = [
        numpy_helper.from_array(np.array([context] * 2, np.int64), "starts"),
        numpy_helper.from_array(np.array([-context] * 2, np.int64), "ends"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(weight, "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "nearest",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["N", 3, "sH", "sW"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    for key, value in {"variant": "nearest", "scale": scale, "context": context}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=str(value)))
    onnx.checker.check_model(model)
    path = Path(folder) / f"nearest_x{scale}.onnx"
    onnx.save(model, path)
    return path
