"""Engine session set-up: the options and the model file follow the execution provider really in use."""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from service import host
from service.runtime import onnxruntime_backend
from service.runtime.engine import Engine, to_pixels
from service.settings import cpu_layout
from tests.conftest import MODELS, SHIPPED_MODELS

_ALL, _EXTENDED = (getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{k}") for k in ("ALL", "EXTENDED"))


def test_cpu_sessions_fill_every_core_and_do_not_spin():
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, cpu_kernels="onnxruntime")
    opts = engine.backends[("fast", 2)].session.get_session_options()
    assert opts.intra_op_num_threads == engine.threads
    assert engine.threads * engine.workers == host.available_cores()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize(
    ("threads", "workers", "cores", "expected"),
    [
        (0, 0, 8, (1, 8)),
        (2, 0, 8, (2, 4)),
        (0, 2, 8, (4, 2)),
        (3, 5, 8, (3, 5)),
        (16, 0, 8, (16, 1)),
        (0, 0, 1, (1, 1)),
    ],
)
def test_cpu_layout_fills_the_cores_with_whatever_is_not_given(threads, workers, cores, expected):
    assert cpu_layout(threads, workers, cores) == expected


@pytest.mark.parametrize("kernels", ["auto", "onnxruntime"])
def test_engine_runs_are_thread_safe_and_give_the_same_result(kernels):
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, tile=24, workers=2, threads=1, cpu_kernels=kernels)
    x = np.random.default_rng(0).random((4, 3, 38, 38), dtype=np.float32)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: engine.run(("fast", 2), x), range(6)))
    assert all(np.array_equal(r, results[0]) for r in results)


def test_sessions_meant_for_cuda_keep_one_cpu_thread():
    assert onnxruntime_backend._session_options(on_cpu=False, threads=0).intra_op_num_threads == 1


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_silent_fallback_from_cuda_reopens_sessions_with_the_cpu_layout(monkeypatch):
    """onnxruntime-gpu without a usable GPU falls back to the CPU; the engine must not keep CUDA's set-up."""
    if host.cuda_usable():
        pytest.skip("a usable GPU: ONNX Runtime would not fall back")
    cuda_first = [("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime_backend, "providers", lambda prefer_gpu: cuda_first)
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=True, threads=2)
    assert engine.provider == "CPUExecutionProvider" and not engine.on_gpu
    opts = engine.backends[("fast", 2)].session.get_session_options()
    assert opts.intra_op_num_threads == 2 and engine.workers == cpu_layout(2, 0)[1]
    # (CUDA sessions use "all" too: the thread count above is what tells the CPU's set-up from CUDA's.)
    assert opts.graph_optimization_level == _ALL  # the _cpu graph's, written for ORT's NCHWc layout
    assert _lowered_for(engine) == "CPUExecutionProvider"


def _lowered_for(engine: Engine) -> str | None:
    return engine.backends[("fast", 2)].session.get_modelmeta().custom_metadata_map.get("lowered_for")


def test_cpu_provider_runs_the_cpu_twin():
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, cpu_kernels="onnxruntime")
    assert _lowered_for(engine) == "CPUExecutionProvider"


def test_without_a_cpu_twin_the_model_itself_runs_and_gives_the_same_pixels(tmp_path):
    for name in ("fast_x2.onnx", "fast_x2.json"):
        shutil.copy(MODELS / name, tmp_path / name)
    plain, twin = (
        Engine(tmp_path, prefer_gpu=False, tile=32),
        Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, tile=32, cpu_kernels="onnxruntime"),
    )
    assert _lowered_for(plain) is None
    assert plain.backends[("fast", 2)].session.get_session_options().graph_optimization_level == _EXTENDED
    img = np.random.default_rng(0).random((45, 38, 3), dtype=np.float32)
    assert np.abs(plain.upscale(("fast", 2), img) - twin.upscale(("fast", 2), img)).max() < 1e-5


def test_twins_are_not_served_as_models_of_their_own():
    assert {f"{v}_x{s}" for v, s in Engine(MODELS, prefer_gpu=False).specs} == set(SHIPPED_MODELS)


@pytest.mark.parametrize("kernels", ["auto", "onnxruntime"])  # the native kernels where they run, the _cpu graph
def test_eight_bit_pixels_from_the_twin_are_to_pixels_of_its_float_result_as_image_tiles(kernels):
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, cpu_kernels=kernels)
    assert engine.makes_pixels(("fast", 2), np.uint8) and not engine.makes_pixels(("fast", 2), np.uint16)
    x = np.random.default_rng(0).random((3, 3, 40, 40), dtype=np.float32)
    pixels = engine.run_pixels(("fast", 2), x, np.uint8)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 52, 52, 3)
    assert np.array_equal(pixels, to_pixels(engine.run(("fast", 2), x).transpose(0, 2, 3, 1), np.uint8))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_containers_cpu_quota_is_read_from_cgroup_v2_or_v1(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert host._cgroup_cpu_quota(tmp_path) == expected


def test_cores_are_capped_by_the_cpu_quota(monkeypatch):
    monkeypatch.setattr(host, "_cgroup_cpu_quota", lambda: 1.5)
    assert host.available_cores() == min(2, len(os.sched_getaffinity(0)))


def test_a_twin_left_behind_by_a_replaced_model_is_not_used(tmp_path, caplog):
    shutil.copy(MODELS / "fast_x2_cpu.onnx", tmp_path / "fast_x2_cpu.onnx")  # written from the shipped fast_x2
    shutil.copy(MODELS / "fast_x3.onnx", tmp_path / "fast_x2.onnx")  # ... which is now another model
    engine = Engine(tmp_path, prefer_gpu=False)
    (key,) = engine.specs
    assert engine.specs[key].cpu_path is None and not engine.makes_pixels(key, np.uint8)
    assert "ignoring fast_x2_cpu.onnx" in caplog.text
