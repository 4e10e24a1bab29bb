"""What runs a model: the one small interface the engine drives, and the service's own CPU kernels behind it.

Two backends implement :class:`Backend`: :class:`service.runtime.onnxruntime_backend.OnnxRuntimeBackend` (ONNX
Runtime on CUDA or the CPU) and :class:`KernelBackend` (``service.runtime.fsrcnn_kernels``, on x86-64 CPUs with
AVX2 + FMA or AVX-512). The engine picks one per model; the batcher sees only the engine. A new backend (another
library, another accelerator) is a class with these four members and a line in ``Engine.__init__`` that chooses
it.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from service.model_files import ModelKey, ModelSpec
from service.runtime.fsrcnn_kernels import (
    ISA_NAMES,
    NativeNetwork,
    instruction_sets,
    kernels_unavailable,
    planes_from_pixels,
)

__all__ = ["Backend", "KernelBackend", "CPU_KERNELS", "batch_from_windows", "kernel_backends", "to_pixels"]

log = logging.getLogger("service.runtime.backends")

CPU_KERNELS = ("auto", *ISA_NAMES, "onnxruntime")  # what may run the models on a CPU (UPSCALER_CPU_KERNELS)


class Backend(Protocol):
    """Runs one model on batches of tiles: (N, 3, T + 2c, T + 2c) float32 in [0, 1] -> (N, 3, sT, sT). Thread-safe:
    the engine's workers call it at once."""

    name: str  # what /v1/models reports as the model's "kernels": "onnxruntime" or "native"
    instruction_set: str | None  # the CPU instruction set it runs on, where it chose one ("avx512", "avx2")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Float results, not clipped."""
        ...

    def makes_pixels(self, dtype: np.dtype | type) -> bool:
        """Whether ``run_pixels`` makes integer pixels of ``dtype`` itself, without a float result in between."""
        ...

    def run_pixels(self, batch: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
        """(N, sT, sT, 3) integer pixels of ``dtype``, exactly as ``to_pixels`` makes them from ``run``; only for a
        ``dtype`` it ``makes_pixels`` of (the engine converts ``run``'s floats for the others)."""
        ...


def to_pixels(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Network output in [0, 1] (unclipped) -> integer pixels of ``dtype``, rounded half up."""
    top = np.iinfo(dtype).max
    return np.clip(x * top + 0.5, 0, top).astype(dtype)


def batch_from_windows(windows: list[np.ndarray], scales: list[float]) -> np.ndarray:
    """(T + 2c, T + 2c, 3) windows of pixels -> one (N, 3, T + 2c, T + 2c) float32 batch, window i's pixels times
    ``scales[i]`` (1 / 255 for 8-bit, 1 for floats), planes first and contiguous, as every backend reads them."""
    if all(w.dtype == np.uint8 for w in windows) and kernels_unavailable() is None:
        return planes_from_pixels(windows, scales[0])  # the same floats, in one pass instead of four
    tiles = np.stack(windows)  # (N, T + 2c, T + 2c, 3)
    # ONNX Runtime would copy any other layout inside the run.
    batch = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2)).astype(np.float32)
    batch *= np.array(scales, np.float32).reshape(-1, 1, 1, 1)
    return batch


class KernelBackend:
    """One model on the service's own CPU kernels (see :class:`Backend`)."""

    name = "native"

    def __init__(self, network: NativeNetwork):
        self.network = network
        self.instruction_set: str | None = network.isa

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.network.run(batch)

    def makes_pixels(self, dtype: np.dtype | type) -> bool:
        return np.dtype(dtype) == np.uint8

    def run_pixels(self, batch: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
        return self.network.run_pixels(batch)


def kernel_backends(specs: dict[ModelKey, ModelSpec], cpu_kernels: str, threads: int) -> dict[ModelKey, KernelBackend]:
    """The models that the service's own CPU kernels run; the others stay on ONNX Runtime. An instruction set asked
    for by name that this CPU cannot run is an error, not a quiet fallback."""
    isa = None if cpu_kernels == "auto" else cpu_kernels
    if isa is not None and isa not in instruction_sets():
        why = kernels_unavailable() or f"this CPU runs them on {instruction_sets()} only"
        raise ValueError(f"cpu_kernels={isa!r}: the native kernels cannot run on {isa}: {why}")
    if not any(spec.kernel_weights_path for spec in specs.values()):
        return {}
    why_not = kernels_unavailable()
    if why_not is None and threads > 1:
        why_not = f"they run a batch on one thread, and {threads} threads per run were asked for"
    if why_not:
        log.info("ONNX Runtime runs the models on the CPU; the native kernels cannot: %s", why_not)
        return {}
    networks = {}
    for key, spec in specs.items():
        if spec.kernel_weights_path is None:
            continue
        try:
            networks[key] = KernelBackend(NativeNetwork(spec.kernel_weights_path, isa=isa))
        except (KeyError, ValueError) as exc:  # a file missing arrays, or with shapes that do not fit together
            log.warning("ignoring %s; ONNX Runtime runs %s: %s", spec.kernel_weights_path.name, spec.path.name, exc)
    return networks
