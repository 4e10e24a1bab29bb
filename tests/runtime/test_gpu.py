"""The CUDA path: runs only where ONNX Runtime has a working CUDA provider (skipped on CPU-only machines)."""

import numpy as np
import onnxruntime as ort
import pytest

from service.runtime.engine import Engine
from tests.conftest import MODELS, smooth_image

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider in this ONNX Runtime"
)


@pytest.fixture(scope="module")
def engines():
    """The default GPU engine (fp32), the GPU engine on the fp16 twins, and the CPU engine."""
    gpu = Engine(MODELS, tile=128, prefer_gpu=True)
    if not gpu.on_gpu:
        pytest.skip("onnxruntime-gpu is installed but fell back to the CPU (no usable GPU)")
    return gpu, Engine(MODELS, tile=128, prefer_gpu=True, precision="fp16"), Engine(MODELS, tile=128, prefer_gpu=False)


def test_cuda_is_the_provider_in_use_with_fp32_models_by_default(engines):
    gpu, _, _ = engines
    assert gpu.provider == "CUDAExecutionProvider" and not gpu.fp16


def test_fp16_twins_are_used_when_asked_for(engines):
    _, half, _ = engines
    assert half.provider == "CUDAExecutionProvider" and half.fp16


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_output_matches_cpu_fp32_within_two_levels(engines, scale, precision):
    gpu, half, cpu = engines
    img = smooth_image(150, 170).astype(np.float32) / 255
    on_gpu = (gpu if precision == "fp32" else half).upscale(("fast", scale), img)
    assert np.abs(on_gpu - cpu.upscale(("fast", scale), img)).max() < 2 / 255
