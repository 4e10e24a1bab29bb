"""The CUDA path: runs only where ONNX Runtime has a working CUDA provider (skipped on CPU-only machines)."""

import numpy as np
import onnxruntime as ort
import pytest

from service.engine import Engine

from .conftest import MODELS, smooth_image

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider in this ONNX Runtime"
)


@pytest.fixture(scope="module")
def engines():
    gpu = Engine(MODELS, tile=128, prefer_gpu=True)
    if not gpu.on_gpu:
        pytest.skip("onnxruntime-gpu is installed but fell back to the CPU (no usable GPU)")
    return gpu, Engine(MODELS, tile=128, prefer_gpu=False)


def test_cuda_is_the_provider_in_use_with_fp16_models(engines):
    gpu, _ = engines
    assert gpu.provider == "CUDAExecutionProvider" and gpu.fp16


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_cuda_fp16_output_matches_cpu_fp32_within_a_level(engines, scale):
    gpu, cpu = engines
    img = smooth_image(150, 170).astype(np.float32) / 255
    a, b = gpu.upscale(("fast", scale), img), cpu.upscale(("fast", scale), img)
    assert np.abs(a - b).max() < 2 / 255
