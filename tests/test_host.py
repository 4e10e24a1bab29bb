"""What service/host.py sets: how malloc keeps memory (in page faults, in a fresh process) and OS thread names."""

import platform
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.host import name_os_thread
from tests.conftest import child_env

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
