"""The engine: runs batches of fixed-shape tiles through the models of a folder.

The engine knows models and arrays, nothing of HTTP. It reads the folder through
``service.model_files`` and picks, per model, what runs it: on a GPU, ONNX Runtime's
CUDA provider (the ``_fp16`` file where fp16 is asked for); on a CPU, the service's
own kernels (``service.runtime.fsrcnn_kernels``, from the ``_native.npz`` weights)
where the CPU has AVX2 + FMA or AVX-512 and ``cpu_kernels`` allows them, else ONNX
Runtime's CPU provider (the ``_cpu`` graph where there is one).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from service.host import available_cores
from service.model_files import ModelKey, discover_models
from service.runtime import onnxruntime_backend
from service.runtime.backends import CPU_KERNELS, Backend, batch_from_windows, kernel_backends, to_pixels
from service.runtime.tiling import TileGrid
from service.settings import cpu_layout

__all__ = ["Engine", "to_pixels"]

log = logging.getLogger("service.runtime.engine")


class Engine:
    """Runs batches of fixed-shape tiles through a model's backend: ONNX Runtime, or on a CPU the native kernels
    where they can run it."""

    def __init__(
        self,
        models: str | Path,
        *,
        tile: int = 128,
        threads: int = 0,
        workers: int = 0,
        prefer_gpu: bool = True,
        precision: str = "auto",
        variants: list[str] | None = None,
        cores: int = 0,
        cpu_kernels: str = "auto",
    ):
        """``cores``: the CPUs this engine and its caller plan for (0 = all this process may use; a share of them
        where several server processes divide the machine). ``cpu_kernels``: "auto" runs models with kernel weights
        on the service's own kernels, on the best instruction set this CPU has, where they can run (see the module
        docstring); "avx512" or "avx2" on that instruction set (ValueError where this CPU lacks it); "onnxruntime"
        never."""
        if cpu_kernels not in CPU_KERNELS:
            raise ValueError(f"cpu_kernels must be one of {CPU_KERNELS}, not {cpu_kernels!r}")
        self.tile = tile
        specs = discover_models(models)
        if variants:
            specs = {k: v for k, v in specs.items() if k[0] in variants}
        if not specs:
            raise FileNotFoundError(f"no <variant>_x<scale>.onnx models found in {models}")
        self.specs = specs
        providers = onnxruntime_backend.providers(prefer_gpu)
        self.cores: int = cores or available_cores()  # CPUs planned for (affinity, cgroup quota, share)
        cpu_threads, cpu_workers = cpu_layout(threads, workers, self.cores)
        on_cpu = providers == ["CPUExecutionProvider"]
        open_sessions = onnxruntime_backend.open_sessions
        backends: dict[ModelKey, Backend] = open_sessions(
            specs, providers, cpu_threads if on_cpu else threads, precision
        )
        # What ONNX Runtime actually uses, not what was asked for (onnxruntime-gpu falls back silently).
        self.provider: str = next(iter(backends.values())).provider
        if self.provider == "CPUExecutionProvider" and not on_cpu:
            # Reopen with the CPU's threads and graph optimisations, not the one thread meant for CUDA.
            backends = open_sessions(specs, ["CPUExecutionProvider"], cpu_threads, precision)
        self.on_gpu = self.provider == "CUDAExecutionProvider"
        self.fp16 = self.on_gpu and precision == "fp16" and all(s.fp16_path for s in specs.values())
        # How many batches the caller should run at once (``run`` is thread-safe).
        self.workers: int = (workers or 1) if self.on_gpu else cpu_workers
        self.threads: int = (threads or 1) if self.on_gpu else cpu_threads
        if not self.on_gpu and cpu_kernels != "onnxruntime":
            # Replacing a session frees it: each holds its own copy of the weights and optimised graph.
            backends.update(kernel_backends(specs, cpu_kernels, self.threads))
        self.backends = backends
        on_kernels = [b for b in backends.values() if b.name == "native"]
        log.info(
            "engine ready: %d models %s on %s, %s of them on the native kernels%s (tile %d, %d concurrent runs x %d "
            "threads)",
            *(len(specs), sorted(specs), self.provider, len(on_kernels)),
            "".join(sorted({f" ({b.instruction_set})" for b in on_kernels})),
            *(tile, self.workers, self.threads),
        )

    @property
    def kernels_run_every_model(self) -> bool:
        """Whether the service's own CPU kernels run every model (ONNX Runtime none)."""
        return all(b.name == "native" for b in self.backends.values())

    def kernels(self, key: ModelKey) -> str:
        """What runs model ``key``: "native" (``service.runtime.fsrcnn_kernels``) or "onnxruntime"."""
        return self.backends[key].name

    def instruction_set(self, key: ModelKey) -> str | None:
        """The instruction set the native kernels run model ``key`` on ("avx512", "avx2"), or None off them."""
        return self.backends[key].instruction_set

    def grid(self, key: ModelKey, height: int, width: int) -> TileGrid:
        spec = self.specs[key]
        return TileGrid(height=height, width=width, tile=self.tile, context=spec.context, scale=spec.scale)

    def run(self, key: ModelKey, batch: np.ndarray) -> np.ndarray:
        """(N, 3, T + 2c, T + 2c) float32 in [0, 1] -> (N, 3, sT, sT) float32 (not clipped)."""
        return self.backends[key].run(batch)

    def makes_pixels(self, key: ModelKey, dtype: np.dtype | type) -> bool:
        """Whether model ``key`` makes pixels of ``dtype`` itself (the _cpu graphs and the native kernels do, 8-bit)."""
        return self.backends[key].makes_pixels(dtype)

    def run_pixels(self, key: ModelKey, batch: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
        """(N, 3, T + 2c, T + 2c) float32 in [0, 1] -> (N, sT, sT, 3) integer pixels of ``dtype`` as ``to_pixels``
        makes them: by the model itself where ``makes_pixels``, else from ``run`` in numpy."""
        backend = self.backends[key]
        if backend.makes_pixels(dtype):
            return backend.run_pixels(batch, dtype)
        return to_pixels(backend.run(batch).transpose(0, 2, 3, 1), dtype)

    @staticmethod
    def batch(windows: list[np.ndarray], scales: list[float]) -> np.ndarray:
        """Tiles cut from padded images -> the batch ``run`` takes (see ``backends.batch_from_windows``)."""
        return batch_from_windows(windows, scales)

    def warmup(self, max_batch: int) -> None:
        """Run every model at the serving tile shape (batch of 1 and full, 8-bit output like most requests),
        ``workers`` runs at once, so the first requests are not slow and the shared memory arena already holds what
        concurrent runs need."""
        with ThreadPoolExecutor(self.workers) as pool:
            for key, spec in self.specs.items():
                n = self.tile + 2 * spec.context
                for size in {1, max_batch}:
                    x = np.zeros((size, 3, n, n), np.float32)
                    list(pool.map(lambda _, k=key, x=x: self.run_pixels(k, x, np.uint8), range(self.workers)))

    def upscale(self, key: ModelKey, img: np.ndarray, max_batch: int = 8) -> np.ndarray:
        """Upscale a whole (H, W, 3) float image in [0, 1] synchronously, tile by tile; float output, unclipped.

        This is the service's inference path without the cross-request batcher;
        evaluation and tests use it.
        """
        grid = self.grid(key, img.shape[0], img.shape[1])
        padded = grid.pad(img.astype(np.float32))
        s = grid.scale
        out = np.empty((img.shape[0] * s, img.shape[1] * s, 3), np.float32)
        for start in range(0, len(grid), max_batch):
            idx = range(start, min(start + max_batch, len(grid)))
            batch = np.stack([grid.cut(padded, i).transpose(2, 0, 1) for i in idx])
            result = self.run(key, np.ascontiguousarray(batch, np.float32))
            for i, tile in zip(idx, result, strict=True):
                grid.place(out, i, tile.transpose(1, 2, 0))
        return out
