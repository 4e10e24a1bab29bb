"""What service/host.py sets and tells: how malloc keeps memory (in page faults, in a fresh process), OS thread names,
and whether CUDA can run here."""

import platform
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

from service.host import cuda_status, name_os_thread
from tests.conftest import child_env, start_server, stop_server

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Average page faults of allocating, filling and freeing a buffer, after a first one of the same size.
_FAULTS = """
import ctypes, resource, sys
from service.host import tune_malloc
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages, so faults count pages on any kernel
if sys.argv[1] == "tuned":
    tune_malloc()
def faults(nbytes):
    bytearray(nbytes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        bytearray(nbytes)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(faults(3 << 20), faults(8 << 20))
"""


def _faults(mode: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], env=child_env(), capture_output=True, text=True, check=True
    ).stdout
    small, large = out.split()
    return float(small), float(large)


def test_a_request_sized_buffer_is_reused_without_page_faults():
    small, _ = _faults("tuned")
    assert small <= 1  # a 512x512 request's 3 MB output is under MMAP_THRESHOLD: the heap keeps it for the next


def test_an_image_sized_buffer_goes_back_to_the_os_when_freed():
    _, large = _faults("tuned")
    assert large >= 1024  # 8 MiB is over MMAP_THRESHOLD: unmapped when freed, its 2,048 pages faulted in afresh


def test_glibc_left_alone_keeps_image_sized_buffers():
    # What tune_malloc changes: glibc's own threshold rises after the first large free, so 8 MiB stays mapped.
    _, large = _faults("default")
    _, tuned_large = _faults("tuned")
    assert large < tuned_large


def test_a_pool_thread_gets_its_python_name_as_its_os_name():
    def os_name() -> str:
        return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    with ThreadPoolExecutor(1, thread_name_prefix="probe", initializer=name_os_thread) as pool:
        assert pool.submit(os_name).result() == "probe_0"


def test_cuda_status_says_why_not():
    usable, why = cuda_status()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert (usable, why) == (False, "this ONNX Runtime is the CPU build (no CUDAExecutionProvider)")
    else:  # onnxruntime-gpu: the driver decides (the GPU image on a host without a GPU: no libcuda.so.1)
        assert why and (usable == why.startswith("the CUDA driver sees"))


def test_without_cuda_the_service_says_it_runs_on_the_cpu_and_why(tmp_path):
    usable, why = cuda_status()
    if usable:
        pytest.skip("CUDA runs here")
    srv = start_server(tmp_path, device="auto", tile=32, threads=1)
    try:
        body = httpx.get(f"{srv.url}/v1/models", timeout=10).json()
    finally:
        stop_server(srv)
    assert (body["device"], body["device_reason"], body["provider"]) == ("cpu", why, "CPUExecutionProvider")
    assert f"running on the CPU: {why}" in srv.log()
