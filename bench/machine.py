"""What a benchmark ran on, recorded beside its figures; and a few helpers every benchmark uses."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.host import cpu_model

__all__ = [
    "describe",
    "machine_class",
    "timed",
    "sgemm_gflops",
    "avx2_sgemm_gflops",
    "child_sgemm_gflops",
    "caches",
    "write_result",
    "RESULTS",
    "MODELS",
]

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = RESULTS.parent.parent / "export" / "models"  # the shipped models


def machine_class() -> str:
    """The class of CPU a figure holds for: "avx512" (x86-64 with AVX-512F), "avx2" (x86-64 with AVX2 + FMA and
    without AVX-512), or the architecture's name (``platform.machine()``) elsewhere."""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next(
            (set(line.split()) for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), set()
        )
    if "avx512f" in flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return platform.machine() or "unknown"


def caches() -> dict[str, str]:
    """The first core's caches as Linux reports them, e.g. ``{"L1d": "48K", "L2": "1024K", "L3": "32768K"}``."""
    found: dict[str, str] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        found[f"L{level}{suffix}"] = size
    return found


def describe() -> dict:
    """CPU model, its class, core count, caches, library versions."""
    return {
        "cpu": cpu_model() or "unknown",
        "machine_class": machine_class(),
        "cores": os.cpu_count(),
        "caches": caches(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def timed(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sgemm_gflops(n: int = 2048, repeat: int = 5) -> float:
    """The machine's practical float32 peak: numpy (BLAS) matrix multiply GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    return 2 * n**3 / timed(lambda: a @ b, repeat=repeat) / 1e9


def avx2_sgemm_gflops(n: int, repeat: int) -> float:
    """SGEMM with OpenBLAS held to its AVX2 (Haswell) kernel, in a child process: OpenBLAS reads the choice once."""
    return child_sgemm_gflops(n, repeat, coretype="Haswell")


def child_sgemm_gflops(n: int, repeat: int, coretype: str | None = None, threads: int | None = None) -> float:
    """SGEMM in a child process, where OpenBLAS can be held to one kernel (``coretype``, e.g. Haswell for AVX2)
    and to ``threads`` threads: it reads both once, when it loads."""
    code = f"from bench.machine import sgemm_gflops; print(sgemm_gflops({n}, repeat={repeat}))"
    env = dict(os.environ)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    if threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    root = RESULTS.parent.parent
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": describe(), **data}, indent=2) + "\n")
    return path
