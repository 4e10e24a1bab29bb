"""This process on its host: the CPUs and GPU it may use, and the C library's settings a server process makes (how
malloc keeps memory, death with its parent, thread names).

The C library's are Linux/glibc calls through ctypes; where they do not exist (another C library, another OS) each
is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import signal
import threading
from pathlib import Path

import onnxruntime as ort

__all__ = [
    "MMAP_THRESHOLD",
    "TRIM_THRESHOLD",
    "available_cores",
    "cpu_model",
    "cuda_status",
    "cuda_usable",
    "die_with_parent",
    "name_os_thread",
    "tune_malloc",
]

# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# prctl() options (linux/prctl.h)
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15

MMAP_THRESHOLD = 4 << 20  # blocks this big or bigger are mapped alone and unmapped when freed
TRIM_THRESHOLD = 16 << 20  # free memory kept at the top of a heap before it is given back


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:  # never fatal: name_os_thread runs as a pool initializer, where an error breaks the pool
        return None


def tune_malloc() -> None:
    """Keep a request's buffers for the next request; give the buffers of big images back when they are freed.

    A new block of ``MMAP_THRESHOLD`` (4 MiB, an 8-bit RGB image of 1.4 MPix) or more that free heap memory
    cannot hold is mapped alone and unmapped when freed, so the image buffers of a 4096x4096 request go back to
    the OS when it ends. By default glibc raises that threshold each time such a block is freed (up to 32 MiB),
    after which image-sized buffers stay in the heap and a large request's peak memory grows well past its raw input
    and output (docs/performance.md has the figures).

    Smaller blocks come from the heap, and each heap keeps up to ``TRIM_THRESHOLD`` of free memory at its top.
    With glibc's defaults, blocks of 1 MiB or more (a 512x512 request's 3 MB output, its 2 MB PNG) would be mapped
    alone, and the heaps would give back all but 128 KiB of what the rest freed, so the next request would fault it
    all in again, page by page (docs/performance.md has the count). The cost is memory kept for reuse: after a
    burst the resident size stays at what the busiest moment needed.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        # Setting either threshold also turns off glibc's dynamic adjustment of both.
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when process ``parent`` dies, so no orphan keeps serving the port."""
    libc = _libc()
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def name_os_thread() -> None:
    """Give the calling OS thread its Python thread's name (its first 15 bytes), as ``top -H``, ``ps -L`` and
    /proc/<pid>/task/<tid>/comm show it (Python 3.11 leaves OS threads unnamed). A pool's ``initializer``."""
    libc = _libc()
    if libc is not None and hasattr(libc, "prctl"):
        libc.prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)


def cuda_usable() -> bool:
    """Whether ONNX Runtime has its CUDA provider and the CUDA driver sees a GPU, without opening a session.

    onnxruntime-gpu lists the provider even on a machine with no GPU, and a session then quietly runs on the CPU.
    """
    return cuda_status()[0]


def cuda_status() -> tuple[bool, str]:
    """``cuda_usable()`` and why: the GPUs the driver sees, or what is missing, in words for a log line."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this ONNX Runtime is the CPU build (no CUDAExecutionProvider)"
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, (
            "no CUDA driver (libcuda.so.1 not found): no NVIDIA GPU here, or a container started without one "
            "(--gpus, the NVIDIA Container Toolkit)"
        )
    status = cuda.cuInit(0)
    if status != 0:
        return False, f"the CUDA driver did not start (cuInit error {status})"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return False, "the CUDA driver sees no GPU"
    return True, f"the CUDA driver sees {count.value} GPU(s)"


def available_cores() -> int:
    """CPUs this process may use: its affinity set (a container's cpuset), capped by a cgroup CPU quota
    (``docker --cpus``, a Kubernetes CPU limit), not the host's count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cpu_model() -> str | None:
    """The CPU's model name as the kernel reports it (Linux's /proc/cpuinfo), for labelling figures; None elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


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
