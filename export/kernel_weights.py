"""The weights of an exported SRNet for the service's own CPU kernels: ``<variant>_x<scale>_native.npz``.

``service/runtime/csrc/fsrcnn.c`` runs the network with PReLU fused into each convolution
and without ONNX Runtime's 16-channel blocks (see ``service.runtime.fsrcnn_kernels``). The
serving path does not read ONNX files itself, so this writes the same weights
as plain arrays (numpy's ``.npz``, no pickles), in the form the kernels run:

* ``conv{i}.weight`` (Cout, Cin, k, k), ``conv{i}.bias``, ``conv{i}.slope``: the
  body's convolutions and their PReLU slopes, one per channel (a layer with one
  slope, turbo's, repeats it);
* ``phases.weight`` (C*s*s, d, taps, taps), ``phases.bias``, ``phases.lag``:
  the transposed convolution as one convolution of its s*s phases
  (``export.cpu.transposed_conv_phases``);
* ``skip.weight`` (C*s*s, 1, 5, 5), ``skip.crop``: the fixed bicubic skip's
  phases and how far inside the tile its 5x5 window starts;
* ``scale``, ``context``, ``source_sha256`` (the model file it was written from,
  so the engine can refuse a derived file left behind by a replaced model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.cpu import transposed_conv_phases
from model.network import SRNet, load_weights
from model.onnx_weights import weights_from_onnx
from service.model_files import SOURCE_SHA256, file_sha256

__all__ = ["native_arrays", "write_native"]


def native_arrays(net: SRNet) -> dict[str, np.ndarray]:
    """The arrays of the module docstring for ``net`` (float32, except the integers)."""
    arrays: dict[str, np.ndarray] = {"scale": np.array(net.scale), "context": np.array(net.context)}
    convs = [m for m in net.body if isinstance(m, torch.nn.Conv2d)]
    acts = [m for m in net.body if isinstance(m, torch.nn.PReLU)]
    for i, (conv, act) in enumerate(zip(convs, acts, strict=True)):
        arrays[f"conv{i}.weight"] = _f32(conv.weight)
        arrays[f"conv{i}.bias"] = _f32(conv.bias)
        arrays[f"conv{i}.slope"] = np.broadcast_to(_f32(act.weight), (conv.out_channels,)).copy()
    up = net.upsample
    arrays["phases.weight"], lag = transposed_conv_phases(_f32(up.weight), up.stride[0], up.padding[0])
    arrays["phases.bias"] = np.repeat(_f32(up.bias), net.scale**2)
    arrays["phases.lag"] = np.array(lag, np.int32)
    arrays["skip.weight"] = _f32(net.skip.phases.weight)
    arrays["skip.crop"] = np.array(net.skip.crop)
    return arrays


def write_native(src: Path, dst: Path) -> None:
    """Write the kernel weights file of the exported model ``src`` to ``dst``."""
    config, state = weights_from_onnx(src)
    net = SRNet(**config).eval()
    load_weights(net, state)
    np.savez(dst, **native_arrays(net), **{SOURCE_SHA256: np.array(file_sha256(src))})


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)
