"""Engine session set-up: the options follow the execution provider really in use."""

import pytest

from service import engine as engine_module
from service.engine import Engine

from .conftest import MODELS


def test_cpu_sessions_use_every_core_and_do_not_spin():
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=False)
    opts = engine.sessions[("fast", 2)].get_session_options()
    assert opts.intra_op_num_threads == 0  # ORT's default: one thread per core
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_sessions_meant_for_cuda_keep_one_cpu_thread():
    assert engine_module._session_options(on_cpu=False, threads=0).intra_op_num_threads == 1


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_silent_fallback_from_cuda_reopens_sessions_with_cpu_threads(monkeypatch):
    """onnxruntime-gpu without a usable GPU falls back to the CPU; the engine must not keep CUDA's one thread."""
    cuda_first = [("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    monkeypatch.setattr(engine_module, "_providers", lambda prefer_gpu: cuda_first)
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=True)
    assert engine.provider == "CPUExecutionProvider" and not engine.on_gpu
    assert engine.sessions[("fast", 2)].get_session_options().intra_op_num_threads == 0
