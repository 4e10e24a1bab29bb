"""Lower an exported SRNet for ONNX Runtime's CPU kernels: the ``<variant>_x<scale>_cpu.onnx``.

The shipped ``<variant>_x<scale>.onnx`` is PyTorch's own export: the network as
trained, the source of its weights (``model.onnx_weights``) and what GPUs run.
The derived file computes the same function, up to float rounding (at most 7.5e-7 on
the shipped models), in a form that ONNX Runtime's fastest CPU convolutions can
run from end to end.

Those convolutions (graph optimisation level "all", which the engine uses for
derived files) work in a blocked layout, NCHWc: channels in blocks of 16 floats on
AVX-512 (8 on AVX2). ONNX Runtime keeps a tensor in that layout from one Conv
to the next only through Conv, Relu, Add and BatchNormalization (which becomes
a 1x1 depthwise Conv, an Add fusing into it); before any other operator it
reorders the tensor to NCHW and back, a pass over memory each way. These thin
layers are bound by memory traffic, so the shipped graph loses time at every
layer:

* per-channel ``PRelu`` has no NCHWc form (and its own kernel is a slow
  broadcast pass). The derived file writes PRelu(z, a) = a z + (1 - a) relu(z) with
  NCHWc operators, in the cheapest of three forms for its neighbours:
  - the next layer is a narrowing 1x1 Conv W (shrink): it becomes
    W diag(a) z + W diag(1 - a) relu(z), two Convs and a Relu;
  - the layer is a widening 1x1 Conv (expand): it is computed twice, once with
    a fused Relu, once scaled by a / (1 - a), and added;
  - otherwise: (1 - a) (a / (1 - a) z + relu(z)), a Relu and a
    BatchNormalization added. In the last two forms the factor (1 - a) is
    folded into the next layer's weights.
* a Conv with fewer input channels than a block reads NCHW, so each 12-channel
  mapping layer was reordered. The derived file pads layers narrower than 16 channels
  to 16 with zero weights (the kernels compute whole blocks anyway).
* ``ConvTranspose`` has no NCHWc kernel. With stride s and a kernel of T*s
  taps (SRNet's, ``model.network``), every output phase (r_y, r_x) is a T x T
  correlation of the input, so the derived file computes all s*s phases as one Conv
  with s*s*C outputs (no extra multiply-adds) and interleaves them with the
  pixel shuffle below; phases whose window starts one input pixel later are
  placed one LR pixel earlier.
* ``DepthToSpace`` (the pixel shuffle, also the bicubic skip's) is a general
  transpose, 3.1 ms for 8 x 12 x 128 x 128; the same shuffle as a transposed
  convolution with stride s and a one-hot kernel per phase is an exact
  scatter, 0.7 ms.

How much faster than the shipped graph it runs is measured by ``bench.inference``
(``cpu_twin_speedup``; docs/performance.md).

The derived file also has an output ``pixels_uint8``: the result as (N, sH, sW, 3)
8-bit pixels, computed as ``service.runtime.engine.to_pixels`` does
(``clip(sr * 255 + 0.5, 0, 255)``, truncated) but inside the session run and
laid out as the output image is, so placing a tile copies whole rows. Only
8-bit: ONNX Runtime 1.31 runs every node of a graph whatever outputs are asked
for, so a 16-bit output would cost every batch; 16-bit results are converted
from ``sr`` in numpy. The derived file records the SHA-256 of the model it was written
from (metadata ``source_sha256``), so the engine can refuse a derived file left behind
by a replaced model. The derived file is checked against the shipped model by
``export.to_onnx.derived_max_abs_diff``; the service's engine reads it on the CPU
provider only (and ``bench/naive_server.py`` on a CPU, to compare like with
like).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.graph import drop_unused_initializers
from service.model_files import SOURCE_SHA256, file_sha256

__all__ = ["LOWERED_FOR", "NCHWC_BLOCK", "lower_for_cpu", "transposed_conv_phases"]

LOWERED_FOR = "CPUExecutionProvider"  # metadata value ``lowered_for`` of a derived file, so a session can tell
NCHWC_BLOCK = 16  # channels per NCHWc block on AVX-512 (8 on AVX2); narrower layers are padded to it
_ONE = 1 - 1e-6  # a slope of exactly 1 (an identity channel) is moved here so a / (1 - a) stays finite


def lower_for_cpu(src: Path, dst: Path) -> None:
    """Write ``src`` rewritten for ONNX Runtime's NCHWc CPU convolutions (see the module docstring)."""
    model = onnx.load(str(src))
    channels = json.loads({p.key: p.value for p in model.metadata_props}["config"])["channels"]
    graph = _Graph(model.graph)
    graph.pad_narrow_layers()
    graph.rewrite_prelus()
    graph.transposed_convs_as_phases()
    graph.pixel_shuffles_as_transposed_convs(channels)
    graph.save()
    _pixel_outputs(model.graph)
    del model.graph.value_info[:]  # shapes of rewritten tensors changed; ONNX Runtime infers them again
    model.metadata_props.append(onnx.StringStringEntryProto(key="lowered_for", value=LOWERED_FOR))
    model.metadata_props.append(onnx.StringStringEntryProto(key=SOURCE_SHA256, value=file_sha256(src)))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """A graph's nodes and constants, rewritten in place. Float constants are held in float64 while weights are
    scaled and folded, and written back as float32 by ``save``."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.nodes = list(graph.node)
        for i, node in enumerate(self.nodes):  # new constants are named after their node
            node.name = node.name or f"{node.op_type}_{i}"
        if len({n.name for n in self.nodes}) != len(self.nodes):
            raise ValueError("node names must be unique: constants of rewritten nodes are named after them")
        self.consts = {}
        for init in graph.initializer:
            value = numpy_helper.to_array(init)
            self.consts[init.name] = value.astype(np.float64) if value.dtype == np.float32 else value

    def save(self) -> None:
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        del self.graph.initializer[:]
        for name, value in self.consts.items():
            value = value.astype(np.float32) if value.dtype == np.float64 else value
            self.graph.initializer.append(numpy_helper.from_array(value, name))
        drop_unused_initializers(self.graph)

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes if tensor in n.output), None)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if tensor in n.input]

    def const(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        return self.consts.get(node.input[i]) if len(node.input) > i else None

    def set_const(self, node: onnx.NodeProto, i: int, value: np.ndarray) -> None:
        """Give input ``i`` of ``node`` a new constant of its own (the exporter shares equal constants)."""
        name = f"{node.name}.input{i}"
        self.consts[name] = value
        while len(node.input) <= i:
            node.input.append("")
        node.input[i] = name

    def add_const(self, name: str, value: np.ndarray) -> str:
        self.consts[name] = np.asarray(value, np.float64)
        return name

    def replace(self, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
        i = next(i for i, n in enumerate(self.nodes) if n is old)
        self.nodes[i : i + 1] = new

    def plain_conv(self, node: onnx.NodeProto | None) -> bool:
        """A Conv or ConvTranspose of one group with constant weights."""
        return (
            node is not None
            and node.op_type in ("Conv", "ConvTranspose")
            and _attrs(node).get("group", 1) == 1
            and self.const(node, 1) is not None
        )

    def neighbours(self, act: onnx.NodeProto) -> tuple[onnx.NodeProto | None, onnx.NodeProto | None]:
        """The node that makes an activation's input, and the one node that reads its output (or None)."""
        consumers = self.consumers(act.output[0])
        return self.producer(act.input[0]), consumers[0] if len(consumers) == 1 else None

    def pad_narrow_layers(self) -> None:
        """Zero-pad the output channels of convs narrower than an NCHWc block (and the next conv's inputs)."""
        for act in [n for n in self.nodes if n.op_type in ("PRelu", "LeakyRelu")]:
            producer, consumer = self.neighbours(act)
            if producer is None or producer.op_type != "Conv" or not self.plain_conv(producer):
                continue
            if len(self.consumers(act.input[0])) != 1:
                continue  # another node reads the unpadded channels
            w = self.const(producer, 1)
            pad = NCHWC_BLOCK - w.shape[0]
            if pad <= 0 or not self.plain_conv(consumer):
                continue
            self.set_const(producer, 1, np.pad(w, [(0, pad), (0, 0), (0, 0), (0, 0)]))
            if self.const(producer, 2) is not None:
                self.set_const(producer, 2, np.pad(self.const(producer, 2), (0, pad)))
            if act.op_type == "PRelu":  # padded channels are zero, whatever their slope
                self.set_const(act, 1, np.pad(self._slopes(act, w.shape[0]), (0, pad)))
            widths = [(0, 0)] * 4
            widths[1 if consumer.op_type == "Conv" else 0] = (0, pad)  # Cin of (Cout, Cin, ..) or (Cin, Cout, ..)
            self.set_const(consumer, 1, np.pad(self.const(consumer, 1), widths))

    def rewrite_prelus(self) -> None:
        """PRelu(z, a) = a z + (1 - a) relu(z), in the form of the module docstring that suits its neighbours."""
        for act in [n for n in self.nodes if n.op_type == "PRelu"]:
            producer, consumer = self.neighbours(act)
            if not self.plain_conv(consumer):
                raise ValueError(f"{act.name}: a PRelu must feed one convolution, which takes its scale")
            w = self.const(consumer, 1)
            a = self._slopes(act, w.shape[1] if consumer.op_type == "Conv" else w.shape[0])
            if _is_1x1(consumer, w) and _narrows(w):
                self._split_next_layer(act, consumer, a)
                continue
            a = np.where(a == 1, _ONE, a)
            self._fold_into_inputs(consumer, 1 - a)
            widening_1x1 = (
                self.plain_conv(producer)
                and _is_1x1(producer, self.const(producer, 1))
                and _widens(self.const(producer, 1))
                and len(self.consumers(act.input[0])) == 1
            )
            if widening_1x1:
                self._recompute_layer(producer, act, a / (1 - a))
            else:
                self._relu_plus_scaled(act, a / (1 - a))

    def _slopes(self, act: onnx.NodeProto, channels: int) -> np.ndarray:
        """A PRelu's slope for each of its ``channels`` (one slope for all is broadcast)."""
        return np.broadcast_to(self.const(act, 1).reshape(-1), (channels,)).copy()

    def _split_next_layer(self, act: onnx.NodeProto, conv: onnx.NodeProto, a: np.ndarray) -> None:
        # conv(prelu(z)) = W diag(a) z + b + W diag(1 - a) relu(z)
        z, name, w = act.input[0], act.name, self.const(conv, 1)
        linear = helper.make_node(
            "Conv", [z, conv.input[1], *conv.input[2:]], [f"{name}_linear"], name=f"{name}_linear"
        )
        rest = helper.make_node("Conv", [f"{name}_relu", conv.input[1]], [f"{name}_rest"], name=f"{name}_rest")
        for node, scale in ((linear, a), (rest, 1 - a)):
            node.attribute.extend(conv.attribute)
            self.set_const(node, 1, w * scale[None, :, None, None])
        self.replace(act, [helper.make_node("Relu", [z], [f"{name}_relu"], name=f"{name}_relu")])
        add = helper.make_node("Add", [f"{name}_linear", f"{name}_rest"], conv.output, name=f"{name}_add")
        self.replace(conv, [linear, rest, add])

    def _recompute_layer(self, conv: onnx.NodeProto, act: onnx.NodeProto, ratio: np.ndarray) -> None:
        # prelu(z) / (1 - a) = ratio * conv(x) + relu(conv(x)): two cheap convs, the Relu fused into one of them
        name = act.name
        scaled = helper.make_node("Conv", list(conv.input), [f"{name}_scaled"], name=f"{name}_scaled")
        scaled.attribute.extend(conv.attribute)
        self.set_const(scaled, 1, self.const(conv, 1) * ratio[:, None, None, None])
        if self.const(conv, 2) is not None:
            self.set_const(scaled, 2, self.const(conv, 2) * ratio)
        add = helper.make_node("Add", [f"{name}_scaled", f"{name}_relu"], act.output, name=f"{name}_add")
        self.replace(act, [scaled, add])
        self.replace(conv, [conv, helper.make_node("Relu", [act.input[0]], [f"{name}_relu"], name=f"{name}_relu")])

    def _relu_plus_scaled(self, act: onnx.NodeProto, ratio: np.ndarray) -> None:
        # prelu(z) / (1 - a) = ratio * z + relu(z); the BatchNormalization becomes a depthwise conv the Add fuses into
        z, name, n = act.input[0], act.name, len(ratio)
        stats = [self.add_const(f"{name}.{k}", v) for k, v in (("ratio", ratio), ("zero", np.zeros(n)))]
        stats += [stats[1], self.add_const(f"{name}.one", np.ones(n))]  # scale, bias, mean, variance
        self.replace(
            act,
            [
                helper.make_node("Relu", [z], [f"{name}_relu"], name=f"{name}_relu"),
                helper.make_node(
                    "BatchNormalization", [z, *stats], [f"{name}_scaled"], name=f"{name}_scaled", epsilon=0.0
                ),
                helper.make_node("Add", [f"{name}_scaled", f"{name}_relu"], act.output, name=f"{name}_add"),
            ],
        )

    def _fold_into_inputs(self, conv: onnx.NodeProto, scale: np.ndarray) -> None:
        """Multiply the weights of ``conv``'s input channels by ``scale``."""
        w = self.const(conv, 1)
        shape = (1, -1, 1, 1) if conv.op_type == "Conv" else (-1, 1, 1, 1)
        self.set_const(conv, 1, w * scale.reshape(shape))

    def transposed_convs_as_phases(self) -> None:
        """ConvTranspose(stride s, T*s taps) -> Conv of the s*s phases (T x T taps) + a one-hot shuffle."""
        for node in [n for n in self.nodes if n.op_type == "ConvTranspose" and self.plain_conv(n)]:
            self.replace(node, self._as_phases(node))

    def _as_phases(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        w, attrs = self.const(node, 1), _attrs(node)  # w: (Cin, Cout, k, k)
        _, cout, k, kw = w.shape
        (s, *other_s), (p, *other_p) = attrs.get("strides", [1, 1]), attrs.get("pads", [0, 0, 0, 0])
        plain = attrs.get("auto_pad", b"NOTSET") == b"NOTSET" and set(attrs.get("dilations", [1])) == {1}
        plain = plain and not any(attrs.get("output_padding", [])) and "output_shape" not in attrs
        if not plain or k != kw or k % s or set(other_s) - {s} or set(other_p) - {p}:
            raise ValueError(f"{node.name}: only square kernels of whole strides, square strides and symmetric pads")
        try:
            phases, lag = transposed_conv_phases(w, s, p)
        except ValueError as exc:
            raise ValueError(f"{node.name}: {exc}") from None
        taps = phases.shape[-1]
        conv = helper.make_node("Conv", [node.input[0]], [f"{node.name}_phases"], name=f"{node.name}_phases")
        self.set_const(conv, 1, phases)
        if self.const(node, 2) is not None:
            self.set_const(conv, 2, np.repeat(self.const(node, 2), s * s))
        # The phases have one position per window: a phase whose window starts one input pixel later is
        # the output pixel s*(q - 1) + r, so the shuffle places it s pixels earlier (and crops the edges).
        begin = max(s * lag[r] - r for r in range(s))
        kernel = _one_hot_kernel(cout, s, [r - s * lag[r] + begin for r in range(s)])
        # The transposed conv gave s (L - 1) + k - 2p pixels for L inputs; the phases have L - taps + 1 positions.
        end = s - 2 * s * taps + kernel.shape[-1] - begin + 2 * p
        shuffle = helper.make_node(
            "ConvTranspose", [conv.output[0]], node.output, name=f"{node.name}_shuffle", strides=[s, s], group=cout
        )
        shuffle.attribute.append(helper.make_attribute("pads", [begin, begin, end, end]))
        self.set_const(shuffle, 1, kernel)
        return [conv, shuffle]

    def pixel_shuffles_as_transposed_convs(self, channels: int) -> None:
        """DepthToSpace(CRD, s) of C*s*s channels -> ConvTranspose(stride s, groups C) with one-hot s x s kernels."""
        for node in [n for n in self.nodes if n.op_type == "DepthToSpace"]:
            attrs = _attrs(node)
            mode, s = attrs.get("mode", b"DCR").decode(), attrs["blocksize"]
            if mode != "CRD":
                raise ValueError(f"{node.name}: only the CRD pixel shuffle (PyTorch's) is lowered, not {mode}")
            shuffle = helper.make_node(
                "ConvTranspose", node.input, node.output, name=node.name, strides=[s, s], group=channels
            )
            self.set_const(shuffle, 1, _one_hot_kernel(channels, s, list(range(s))))
            self.replace(node, [shuffle])


def transposed_conv_phases(w: np.ndarray, s: int, p: int) -> tuple[np.ndarray, list[int]]:
    """The s*s phases of ConvTranspose(weights ``w`` (Cin, Cout, T*s, T*s), stride s, pads p) as one Conv.

    Returns Conv weights (Cout*s*s, Cin, T, T), output channel c*s*s + ry*s + rx
    for output pixels (s*y + ry, s*x + rx) of channel c, and ``lag``: output
    pixel s*q + r is the correlation of input pixels q + lag[r] .. q + lag[r] + T - 1.
    """
    cin, cout, k, _ = w.shape
    taps = k // s
    lag = [(r + p) // s - taps + 1 for r in range(s)]
    if min(lag) != 0:
        raise ValueError(f"phases start {min(lag)} input pixels from their output pixel")
    phases = np.zeros((cout * s * s, cin, taps, taps), w.dtype)
    for c, ry, rx, ty, tx in np.ndindex(cout, s, s, taps, taps):
        ky, kx = (r + p - s * (lag[r] + t) for r, t in ((ry, ty), (rx, tx)))
        phases[c * s * s + ry * s + rx, :, ty, tx] = w[:, c, ky, kx]
    return phases, lag


def _is_1x1(node: onnx.NodeProto, w: np.ndarray) -> bool:
    return node.op_type == "Conv" and w.shape[2:] == (1, 1)


def _narrows(w: np.ndarray) -> bool:
    """Fewer output than input channels (Conv weights are (Cout, Cin, kh, kw))."""
    return w.shape[0] < w.shape[1]


def _widens(w: np.ndarray) -> bool:
    """More output than input channels."""
    return w.shape[0] > w.shape[1]


def _one_hot_kernel(channels: int, s: int, offsets: list[int]) -> np.ndarray:
    """Kernel of a ConvTranspose(stride s, group ``channels``) that puts input channel c*s*s + ry*s + rx at output
    pixel (s*y + offsets[ry], s*x + offsets[rx]) before its pads crop: an exact scatter."""
    size = max(offsets) + 1
    kernel = np.zeros((channels * s * s, 1, size, size))
    for c, ry, rx in np.ndindex(channels, s, s):
        kernel[c * s * s + ry * s + rx, 0, offsets[ry], offsets[rx]] = 1
    return kernel


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
