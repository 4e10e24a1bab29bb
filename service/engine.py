"""ONNX Runtime inference: one session per (variant, scale), fixed tile shapes.

The engine knows models and arrays, nothing of HTTP. Models are discovered in
a folder: every ``<variant>_x<scale>.onnx`` carries its scale, context and
variant in the ONNX metadata, and its model card in a JSON file of the same
stem. Twins beside it compute the same function for one target:
``<variant>_x<scale>_fp16.onnx`` for GPUs asked for fp16, and
``<variant>_x<scale>_cpu.onnx`` (lowered for ONNX Runtime's CPU kernels,
see ``export.cpu``), which the CPU provider runs whenever it exists, and
``<variant>_x<scale>_native.npz``, the weights for the service's own CPU
kernels (``service.native``), which run the model instead of ONNX Runtime on
a CPU with AVX2 + FMA or AVX-512 unless ``cpu_kernels="onnxruntime"``. A twin is used only
if the SHA-256 it records of its model matches the model file beside it; a
twin left behind by a replaced model is ignored with a warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.native import ISA_NAMES, NATIVE_SUFFIX, NativeNetwork, instruction_sets, kernels_unavailable
from service.tiling import TileGrid

__all__ = [
    "ModelKey",
    "ModelSpec",
    "Engine",
    "available_cores",
    "cpu_layout",
    "cuda_usable",
    "discover_models",
    "to_pixels",
]

log = logging.getLogger("service.engine")

ModelKey = tuple[str, int]  # (variant, scale)
_NAME = re.compile(r"^(?P<variant>[a-z0-9]+)_x(?P<scale>[234])\.onnx$")
_TWIN_SUFFIXES = ("_fp16", "_cpu")


@dataclass(frozen=True)
class ModelSpec:
    variant: str
    scale: int
    context: int  # LR pixels of context the network needs on each side of a tile
    path: Path
    fp16_path: Path | None = None
    cpu_path: Path | None = None
    native_path: Path | None = None
    card: dict = field(default_factory=dict)  # model-card facts (PSNR, parameters, ...)

    @property
    def key(self) -> ModelKey:
        return (self.variant, self.scale)


def to_pixels(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Network output in [0, 1] (unclipped) -> integer pixels of ``dtype``, rounded half up."""
    top = np.iinfo(dtype).max
    return np.clip(x * top + 0.5, 0, top).astype(dtype)


def _metadata(path: Path) -> dict[str, str]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.get_modelmeta().custom_metadata_map


def discover_models(location: str | Path) -> dict[ModelKey, ModelSpec]:
    """Find the servable models in a folder (see the module docstring), or load one ``.onnx`` file."""
    location = Path(location)
    if location.is_file():
        paths = [location]
    else:  # twins are found through their model
        paths = sorted(p for p in location.glob("*.onnx") if not p.stem.endswith(_TWIN_SUFFIXES))
    specs: dict[ModelKey, ModelSpec] = {}
    for path in paths:
        match = _NAME.match(path.name)
        meta = _metadata(path)
        if not match and "context" not in meta:
            continue
        match = match or {"variant": "custom", "scale": meta.get("scale")}
        card_path = path.with_suffix(".json")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        fp16, cpu = (_twin(path, digest, suffix + ".onnx", _onnx_source) for suffix in _TWIN_SUFFIXES)
        native = _twin(path, digest, NATIVE_SUFFIX + ".npz", _npz_source)
        spec = ModelSpec(
            variant=meta.get("variant", match["variant"]),
            scale=int(meta.get("scale", match["scale"])),
            context=int(meta["context"]),
            path=path,
            fp16_path=fp16,
            cpu_path=cpu,
            native_path=native,
            card=json.loads(card_path.read_text()) if card_path.exists() else {},
        )
        specs[spec.key] = spec
    return specs


def _twin(model: Path, model_sha256: str, name: str, written_from: Callable[[Path], str | None]) -> Path | None:
    """``model``'s twin ``<stem><name>``, if it exists and ``written_from(twin)``, the SHA-256 it records of its
    model, is this very model file's."""
    twin = model.with_name(model.stem + name)
    if not twin.exists():
        return None
    try:
        source = written_from(twin)
    except (OSError, ValueError) as exc:  # an .npz that is not one, or truncated
        log.warning("ignoring %s: it cannot be read (%s)", twin.name, exc)
        return None
    if source != model_sha256:
        log.warning(
            "ignoring %s: it was not written from this %s; delete it, or rewrite it with "
            "python -m export.onnx --twins %s (needs the train extra)",
            *(twin.name, model.name, model),
        )
        return None
    return twin


def _onnx_source(twin: Path) -> str | None:
    return _metadata(twin).get("source_sha256")


def _npz_source(twin: Path) -> str | None:
    with np.load(twin, allow_pickle=False) as arrays:
        return str(arrays["source_sha256"]) if "source_sha256" in arrays else None


_shared_cpu_arena = False


def _share_cpu_arena(opts: ort.SessionOptions) -> None:
    """Let every session of this process draw CPU memory from one arena.

    Each session otherwise keeps its own arena sized for its largest batch; with
    six models warmed up, the service's idle RSS was 716 MB, and 287 MB shared
    (bench/results/memory.json). Up to ``Engine.workers`` batches run at once,
    so a shared arena is as large as that many of the largest batches need.
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


def _providers(prefer_gpu: bool) -> list:
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


def cuda_usable() -> bool:
    """Whether ONNX Runtime has its CUDA provider and the CUDA driver sees a GPU, without opening a session.

    onnxruntime-gpu lists the provider even on a machine with no GPU, and a session then quietly runs on the CPU.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def available_cores() -> int:
    """CPUs this process may use: its affinity set (a container's cpuset), capped by a cgroup CPU quota
    (``docker --cpus``, a Kubernetes CPU limit), not the host's count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), or None without one."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").exists():
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            return None if quota <= 0 else quota / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        pass
    return None


def cpu_layout(threads: int = 0, workers: int = 0, cores: int | None = None) -> tuple[int, int]:
    """(ORT threads per run, concurrent runs) on a CPU; 0 means "fill the cores with the other".

    By default every core runs its own batch with one ORT thread: one thread never
    waits for the other at the end of each operator, which matters most in the
    service, where codec threads take turns on the same cores (figures in
    docs/performance.md).
    """
    cores = cores or available_cores()
    workers = workers or (max(1, cores // threads) if threads else cores)
    return threads or max(1, cores // workers), workers


def _session_options(on_cpu: bool, threads: int, cpu_twin: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # On CPU, "all" adds ORT's blocked NCHWc layout. CPU twins are written for it (export/cpu.py); the shipped
    # graphs gain nothing consistent from it, faster on one machine and slower on another (docs/performance.md).
    level = "ORT_ENABLE_EXTENDED" if on_cpu and not cpu_twin else "ORT_ENABLE_ALL"
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    # With CUDA, ORT's CPU threads run only the shape operators: one is enough unless asked for more.
    opts.intra_op_num_threads = threads if on_cpu else threads or 1
    opts.inter_op_num_threads = 1
    # Idle ORT threads would spin on cores the codec threads need between batches (CPU and GPU alike).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    _share_cpu_arena(opts)
    return opts


def _open_sessions(
    specs: dict[ModelKey, ModelSpec], providers: list, threads: int, precision: str
) -> dict[ModelKey, ort.InferenceSession]:
    """One session per model: on the CPU provider its CPU twin where there is one; on CUDA the model, or its
    fp16 twin where fp16 is asked for and the twin exists."""
    on_cpu = providers == ["CPUExecutionProvider"]
    opts, twin_opts = _session_options(on_cpu, threads), _session_options(on_cpu, threads, cpu_twin=True)
    sessions = {}
    for key, spec in specs.items():
        twin = on_cpu and spec.cpu_path is not None
        path = spec.cpu_path if twin else spec.path
        sessions[key] = ort.InferenceSession(str(path), twin_opts if twin else opts, providers=providers)
        on_cuda = sessions[key].get_providers()[0] == "CUDAExecutionProvider"
        if on_cuda and precision == "fp16" and spec.fp16_path is not None:
            sessions[key] = ort.InferenceSession(str(spec.fp16_path), opts, providers=providers)
    return sessions


CPU_KERNELS = ("auto", *ISA_NAMES, "onnxruntime")  # what may run the models on a CPU (Engine's cpu_kernels)


def _native_networks(specs: dict[ModelKey, ModelSpec], cpu_kernels: str, threads: int) -> dict[ModelKey, NativeNetwork]:
    """The models that the service's own CPU kernels run; the others stay on ONNX Runtime. An instruction set asked
    for by name that this CPU cannot run is an error, not a quiet fallback."""
    isa = None if cpu_kernels == "auto" else cpu_kernels
    if isa is not None and isa not in instruction_sets():
        why = kernels_unavailable() or f"this CPU runs them on {instruction_sets()} only"
        raise ValueError(f"cpu_kernels={isa!r}: the native kernels cannot run on {isa}: {why}")
    if not any(spec.native_path for spec in specs.values()):
        return {}
    why_not = kernels_unavailable()
    if why_not is None and threads > 1:
        why_not = f"they run a batch on one thread, and {threads} threads per run were asked for"
    if why_not:
        log.info("ONNX Runtime runs the models on the CPU; the native kernels cannot: %s", why_not)
        return {}
    networks = {}
    for key, spec in specs.items():
        if spec.native_path is None:
            continue
        try:
            networks[key] = NativeNetwork(spec.native_path, isa=isa)
        except (KeyError, ValueError) as exc:  # a twin missing arrays, or with shapes that do not fit together
            log.warning("ignoring %s; ONNX Runtime runs %s: %s", spec.native_path.name, spec.path.name, exc)
    return networks


class Engine:
    """Runs batches of fixed-shape tiles through a model: its ONNX Runtime session, or on a CPU the native kernels
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
        where several server processes divide the machine). ``cpu_kernels``: "auto" runs models with a native twin
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
        providers = _providers(prefer_gpu)
        self.cores: int = cores or available_cores()  # CPUs planned for (affinity, cgroup quota, share)
        cpu_threads, cpu_workers = cpu_layout(threads, workers, self.cores)
        on_cpu = providers == ["CPUExecutionProvider"]
        self.sessions = _open_sessions(specs, providers, cpu_threads if on_cpu else threads, precision)
        first = next(iter(self.sessions.values()))
        # What ONNX Runtime actually uses, not what was asked for (onnxruntime-gpu falls back silently).
        self.provider: str = first.get_providers()[0]
        if self.provider == "CPUExecutionProvider" and providers != ["CPUExecutionProvider"]:
            # Reopen with the CPU's threads and graph optimisations, not the one thread meant for CUDA.
            self.sessions = _open_sessions(specs, ["CPUExecutionProvider"], cpu_threads, precision)
        self.on_gpu = self.provider == "CUDAExecutionProvider"
        self.fp16 = self.on_gpu and precision == "fp16" and all(s.fp16_path for s in specs.values())
        self._outputs = {key: {o.name for o in sess.get_outputs()} for key, sess in self.sessions.items()}
        # How many batches the caller should run at once (``run`` is thread-safe).
        self.workers: int = (workers or 1) if self.on_gpu else cpu_workers
        self.threads: int = (threads or 1) if self.on_gpu else cpu_threads
        self.native = (
            {} if self.on_gpu or cpu_kernels == "onnxruntime" else _native_networks(specs, cpu_kernels, self.threads)
        )
        for key in self.native:  # not needed, and each holds its own copy of the weights and optimised graph
            del self.sessions[key], self._outputs[key]
        log.info(
            "engine ready: %d models %s on %s, %s of them on the native kernels%s (tile %d, %d concurrent runs x %d "
            "threads)",
            *(len(specs), sorted(specs), self.provider, len(self.native)),
            "".join(sorted({f" ({net.isa})" for net in self.native.values()})),
            *(tile, self.workers, self.threads),
        )

    @property
    def native_only(self) -> bool:
        """Whether the service's native kernels run every model (ONNX Runtime none)."""
        return bool(self.native) and self.native.keys() == self.specs.keys()

    def kernels(self, key: ModelKey) -> str:
        """What runs model ``key``: "native" (``service.native``) or "onnxruntime"."""
        return "native" if key in self.native else "onnxruntime"

    def instruction_set(self, key: ModelKey) -> str | None:
        """The instruction set the native kernels run model ``key`` on ("avx512", "avx2"), or None off them."""
        return self.native[key].isa if key in self.native else None

    def grid(self, key: ModelKey, height: int, width: int) -> TileGrid:
        spec = self.specs[key]
        return TileGrid(height=height, width=width, tile=self.tile, context=spec.context, scale=spec.scale)

    def run(self, key: ModelKey, batch: np.ndarray) -> np.ndarray:
        """(N, 3, T + 2c, T + 2c) float32 in [0, 1] -> (N, 3, sT, sT) float32 (not clipped)."""
        if key in self.native:
            return self.native[key].run(batch)
        session = self.sessions[key]
        if not self.on_gpu:
            return session.run(["sr"], {"lr": batch})[0]
        binding = session.io_binding()  # output stays on the device until copied once
        binding.bind_cpu_input("lr", batch)
        binding.bind_output("sr", "cuda")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def has_pixels(self, key: ModelKey, dtype: np.dtype | type) -> bool:
        """Whether model ``key`` makes pixels of ``dtype`` itself (CPU twins and the native kernels do, for 8-bit)."""
        if key in self.native:
            return np.dtype(dtype) == np.uint8
        return f"pixels_{np.dtype(dtype).name}" in self._outputs[key]

    def run_pixels(self, key: ModelKey, batch: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
        """(N, 3, T + 2c, T + 2c) float32 in [0, 1] -> (N, sT, sT, 3) integer pixels of ``dtype`` as ``to_pixels``
        makes them: by the model itself where ``has_pixels``, else from ``run`` in numpy."""
        if self.has_pixels(key, dtype):
            if key in self.native:
                return self.native[key].run_pixels(batch)
            return self.sessions[key].run([f"pixels_{np.dtype(dtype).name}"], {"lr": batch})[0]
        return to_pixels(self.run(key, batch).transpose(0, 2, 3, 1), dtype)

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
