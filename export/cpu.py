"""Lower an exported SRNet for ONNX Runtime's CPU kernels: the ``<variant>_x<scale>_cpu.onnx`` twin.

The shipped ``<variant>_x<scale>.onnx`` is PyTorch's own export: the network as
trained, the source of its weights (``model.onnx_weights``) and what GPUs run.
Two of its operators are slow in ONNX Runtime's CPU provider, measured on a
batch of 8 fast x2 serving tiles (``bench/results/engine.json``):

* per-channel ``PRelu`` runs as a slow broadcast pass, 22 ms for a 56-channel
  activation where a ``Mul`` of the same shape takes 1.7 ms. Written as
  ``x + (slope - 1) * min(x, 0)`` (``Clip``, ``Mul``, ``Add``) it takes 6 ms:
  for x >= 0 that is x, for x < 0 it is slope * x.
* ``DepthToSpace`` (the bicubic skip's pixel shuffle) is a general transpose,
  3.1 ms for 8 x 12 x 128 x 128; the same shuffle as a transposed convolution
  with stride s and a one-hot s x s kernel per phase is an exact scatter, 0.7 ms.

Both rewrites compute the same function, up to float rounding (about 1e-7);
the learned ``ConvTranspose`` is untouched. The twin also has an output
``pixels_uint8``: the result as (N, sH, sW, 3) 8-bit pixels, computed as
``service.engine.to_pixels`` does (``clip(sr * 255 + 0.5, 0, 255)``,
truncated) but inside the session run, 3x faster than numpy, and laid out as
the output image is, so placing a tile copies whole rows (a batch of 2 tiles:
0.27 ms for conversion and placing, against 0.69 ms for NCHW pixels and
numpy's transposing copy). Only 8-bit: ONNX Runtime 1.31 runs every node of
a graph whatever outputs are asked for, so a 16-bit output would cost every
batch; 16-bit results are converted from ``sr`` in numpy. The twin records
the SHA-256 of the model it was written from (metadata ``source_sha256``), so
the engine can refuse a twin left behind by a replaced model. The twin is checked against the shipped
model by ``export.onnx.twin_max_abs_diff``; the service's engine reads it on
the CPU provider only (and ``bench/naive_server.py`` on a CPU, to compare like
with like).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.graph import drop_unused_initializers, file_sha256

__all__ = ["CPU_TWIN_SUFFIX", "LOWERED_FOR", "lower_for_cpu"]

CPU_TWIN_SUFFIX = "_cpu"
LOWERED_FOR = "CPUExecutionProvider"  # metadata value ``lowered_for`` of a twin, so a session can tell


def lower_for_cpu(src: Path, dst: Path) -> None:
    """Write ``src`` with per-channel ``PRelu`` and ``DepthToSpace`` replaced by faster equivalents."""
    model = onnx.load(str(src))
    channels = json.loads({p.key: p.value for p in model.metadata_props}["config"])["channels"]
    _prelu_as_clip_mul_add(model.graph)
    _pixel_shuffle_as_transposed_conv(model.graph, channels)
    _pixel_outputs(model.graph)
    model.metadata_props.append(onnx.StringStringEntryProto(key="lowered_for", value=LOWERED_FOR))
    model.metadata_props.append(onnx.StringStringEntryProto(key="source_sha256", value=file_sha256(src)))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


def _prelu_as_clip_mul_add(graph: onnx.GraphProto) -> None:
    """PRelu(x, a) -> x + (a - 1) * Clip(x, max=0), node by node."""
    consts = {init.name: init for init in graph.initializer}
    zero = numpy_helper.from_array(np.zeros((), np.float32), "cpu_lowering.zero")
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(graph.node):
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope, y, name = node.input[0], node.input[1], node.output[0], node.name or f"prelu_{i}"
        a = numpy_helper.to_array(consts[slope]).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(a - 1, f"{name}.slope_minus_one"))
        nodes += [
            helper.make_node("Clip", [x, "", zero.name], [f"{name}_negative"], name=f"{name}_clip"),
            helper.make_node(
                "Mul", [f"{name}_negative", f"{name}.slope_minus_one"], [f"{name}_scaled"], name=f"{name}_mul"
            ),
            helper.make_node("Add", [x, f"{name}_scaled"], [y], name=f"{name}_add"),
        ]
    if len(nodes) != len(graph.node):
        graph.initializer.append(zero)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)


def _pixel_outputs(graph: onnx.GraphProto) -> None:
    """Add ``pixels_uint8``: Cast(Clip(sr * 255 + 0.5, 0, 255)) to uint8, as (N, sH, sW, 3) tiles."""
    (sr,) = graph.output
    n, c, h, w = (d.dim_param or d.dim_value for d in sr.type.tensor_type.shape.dim)
    name = "pixels_uint8"
    for k, v in {"scale": 255.0, "half": 0.5, "zero": 0.0, "top": 255.0}.items():
        graph.initializer.append(numpy_helper.from_array(np.array(v, np.float32), f"{name}.{k}"))
    step = [sr.name] + [f"{name}_{k}" for k in ("scaled", "rounded", "clipped", "nchw")]
    graph.node.extend(
        [
            helper.make_node("Mul", [step[0], f"{name}.scale"], [step[1]], name=f"{name}_mul"),
            helper.make_node("Add", [step[1], f"{name}.half"], [step[2]], name=f"{name}_add"),
            helper.make_node("Clip", [step[2], f"{name}.zero", f"{name}.top"], [step[3]], name=f"{name}_clip"),
            helper.make_node("Cast", [step[3]], [step[4]], name=f"{name}_cast", to=onnx.TensorProto.UINT8),
            # Tiles as the output image lays them out, so placing one is a copy of whole rows.
            helper.make_node("Transpose", [step[4]], [name], name=f"{name}_hwc", perm=[0, 2, 3, 1]),
        ]
    )
    graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, [n, h, w, c]))


def _pixel_shuffle_as_transposed_conv(graph: onnx.GraphProto, channels: int) -> None:
    """DepthToSpace(CRD, s) of C*s*s channels -> ConvTranspose(stride s, groups C) with one-hot s x s kernels."""
    for i, node in enumerate(graph.node):
        if node.op_type != "DepthToSpace":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("mode", b"DCR").decode()
        if mode != "CRD":
            raise ValueError(f"{node.name}: only the CRD pixel shuffle (PyTorch's) is lowered, not {mode}")
        s = attrs["blocksize"]
        # CRD: input channel c*s*s + r1*s + r2 is output pixel (s*h + r1, s*w + r2) of channel c.
        kernel = np.zeros((channels * s * s, 1, s, s), np.float32)
        for c in range(channels):
            for r1 in range(s):
                for r2 in range(s):
                    kernel[c * s * s + r1 * s + r2, 0, r1, r2] = 1
        weight = f"{node.name or f'pixel_shuffle_{i}'}.one_hot"
        graph.initializer.append(numpy_helper.from_array(kernel, weight))
        node.op_type = "ConvTranspose"
        node.input.append(weight)
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("strides", [s, s]), helper.make_attribute("group", channels)])
