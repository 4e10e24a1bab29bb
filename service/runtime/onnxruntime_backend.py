"""ONNX Runtime as a backend: one session per model, on CUDA or the CPU.

On the CPU provider a model runs its ``_cpu`` graph where there is one (lowered for ORT's CPU kernels, with 8-bit
pixels as a second output); on CUDA the model, or its ``_fp16`` file where fp16 is asked for, with IOBinding so the
output stays on the device until it is copied once. All CPU sessions of the process draw memory from one arena.
"""

from __future__ import annotations

import logging
from functools import cache

import numpy as np
import onnxruntime as ort

from service.model_files import INPUT, OUTPUT, ModelKey, ModelSpec, pixels_output

__all__ = ["OnnxRuntimeBackend", "open_sessions", "providers"]

log = logging.getLogger("service.runtime.onnxruntime_backend")


class OnnxRuntimeBackend:
    """One model's ONNX Runtime session (see :class:`service.runtime.backends.Backend`)."""

    name = "onnxruntime"
    instruction_set = None

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.provider: str = session.get_providers()[0]  # what ORT uses, not what was asked for
        self._outputs = {o.name for o in session.get_outputs()}

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.provider != "CUDAExecutionProvider":
            return self.session.run([OUTPUT], {INPUT: batch})[0]
        binding = self.session.io_binding()  # output stays on the device until copied once
        binding.bind_cpu_input(INPUT, batch)
        binding.bind_output(OUTPUT, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def makes_pixels(self, dtype: np.dtype | type) -> bool:
        return pixels_output(dtype) in self._outputs

    def run_pixels(self, batch: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
        return self.session.run([pixels_output(dtype)], {INPUT: batch})[0]


_shared_cpu_arena = False


def _share_cpu_arena(opts: ort.SessionOptions) -> None:
    """Let every session of this process draw CPU memory from one arena.

    Each session otherwise keeps its own arena sized for its largest batch, and the
    service's idle memory grows with every model served (bench/results/memory.json).
    Up to one batch per engine worker runs at once, so a shared arena is as large as
    that many of the largest batches need.
    """
    global _shared_cpu_arena
    if not _shared_cpu_arena:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's default arena settings
        _shared_cpu_arena = True
    opts.add_session_config_entry("session.use_env_allocators", "1")


@cache
def _load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels that onnxruntime-gpu[cuda,cudnn] installs (make serve), where they
    are; elsewhere (the CUDA container image) the system's libraries are found as usual."""
    try:
        ort.preload_dlls(directory="")
    except Exception as exc:  # missing wheels are not an error: the system's libraries may be there
        log.info("CUDA libraries not preloaded from wheels: %s", exc)


def providers(prefer_gpu: bool) -> list:
    available = ort.get_available_providers()
    chosen: list = []
    if prefer_gpu and "CUDAExecutionProvider" in available:
        _load_cuda_libraries()
        # Exhaustive cuDNN search pays off because tile shapes are fixed: it is tuned once per shape.
        chosen.append(
            ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": True})
        )
    chosen.append("CPUExecutionProvider")
    return chosen


def _session_options(on_cpu: bool, threads: int, cpu_graph: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # On CPU, "all" adds ORT's blocked NCHWc layout. The _cpu graphs are written for it (export/cpu.py); the shipped
    # graphs gain nothing consistent from it, faster on one machine and slower on another (docs/performance.md).
    level = "ORT_ENABLE_EXTENDED" if on_cpu and not cpu_graph else "ORT_ENABLE_ALL"
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    # With CUDA, ORT's CPU threads run only the shape operators: one is enough unless asked for more.
    opts.intra_op_num_threads = threads if on_cpu else threads or 1
    opts.inter_op_num_threads = 1
    # Idle ORT threads would spin on cores the codec threads need between batches (CPU and GPU alike).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    _share_cpu_arena(opts)
    return opts


def open_sessions(
    specs: dict[ModelKey, ModelSpec], providers: list, threads: int, precision: str
) -> dict[ModelKey, OnnxRuntimeBackend]:
    """One session per model: on the CPU provider its _cpu graph where there is one; on CUDA the model, or its
    _fp16 file where fp16 is asked for and the file exists."""
    on_cpu = providers == ["CPUExecutionProvider"]
    opts, cpu_opts = _session_options(on_cpu, threads), _session_options(on_cpu, threads, cpu_graph=True)
    sessions = {}
    for key, spec in specs.items():
        lowered = on_cpu and spec.cpu_path is not None
        path = spec.cpu_path if lowered else spec.path
        sessions[key] = ort.InferenceSession(str(path), cpu_opts if lowered else opts, providers=providers)
        on_cuda = sessions[key].get_providers()[0] == "CUDAExecutionProvider"
        if on_cuda and precision == "fp16" and spec.fp16_path is not None:
            sessions[key] = ort.InferenceSession(str(spec.fp16_path), opts, providers=providers)
    return {key: OnnxRuntimeBackend(session) for key, session in sessions.items()}
