"""The committed models: present for every scale, no checkerboard, and quality on Set5 when the data is here."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from service.runtime.engine import Engine, to_pixels
from tests.conftest import DATASETS, MODELS

SCALES = (2, 3, 4)
VARIANTS = ("fast", "turbo")
PUBLISHED_FSRCNN = {2: 37.00, 3: 33.16, 4: 30.71}
TURBO_MAX_LOSS_DB = 0.15  # what turbo's fused activations may cost against fast on Set5


@pytest.fixture(scope="module")
def engine():
    return Engine(MODELS, tile=48, prefer_gpu=False, variants=list(VARIANTS))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_scale_is_shipped_with_a_card(variant):
    for s in SCALES:
        assert (MODELS / f"{variant}_x{s}.onnx").is_file()
        card = json.loads((MODELS / f"{variant}_x{s}.json").read_text())
        assert card["trained"] and card["set5"]["psnr"] > card["set5"]["bicubic_psnr"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("twin", "tolerance"), [("_cpu", 1e-5), ("_fp16", 2e-3)])
def test_twins_compute_what_their_shipped_model_computes(variant, scale, twin, tolerance):
    """A derived file written from older weights would serve another model on that target."""
    x = np.random.default_rng(0).random((1, 3, 60, 60), dtype=np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"lr": x})[0]
    stem = f"{variant}_x{scale}"
    assert np.abs(run(MODELS / f"{stem}.onnx") - run(MODELS / f"{stem}{twin}.onnx")).max() < tolerance


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scale", SCALES)
def test_cpu_twins_give_the_pixels_of_their_shipped_model(variant, scale):
    x = np.random.default_rng(0).random((2, 3, 60, 60), dtype=np.float32)
    sr = ort.InferenceSession(str(MODELS / f"{variant}_x{scale}.onnx"), providers=["CPUExecutionProvider"]).run(
        ["sr"], {"lr": x}
    )[0]
    twin = ort.InferenceSession(str(MODELS / f"{variant}_x{scale}_cpu.onnx"), providers=["CPUExecutionProvider"])
    pixels = twin.run(["pixels_uint8"], {"lr": x})[0]
    expected = to_pixels(sr.transpose(0, 2, 3, 1), np.uint8)
    assert np.abs(pixels.astype(int) - expected).max() <= 1  # the derived file's float rounding may move a pixel by 1
    assert np.mean(pixels != expected) < 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("grey", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_flat_grey_comes_back_flat(engine, variant, scale, grey):
    out = engine.upscale((variant, scale), np.full((40, 37, 3), grey, np.float32))
    assert np.abs(out - grey).max() < 0.25 / 255


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("axis", [0, 1])
def test_smooth_gradient_comes_back_smooth(engine, variant, scale, axis):
    # A linear ramp upscales to the same ramp sampled at the HR pixel centres (away from the mirrored borders).
    n = 48
    ramp = 0.2 + 0.6 * np.arange(n) / (n - 1)
    img = np.broadcast_to(ramp[:, None, None] if axis == 0 else ramp[None, :, None], (n, n, 3)).astype(np.float32)
    out = engine.upscale((variant, scale), np.ascontiguousarray(img))
    centres = (np.arange(n * scale) + 0.5) / scale - 0.5
    ideal = 0.2 + 0.6 * centres / (n - 1)
    ideal = ideal[:, None, None] if axis == 0 else ideal[None, :, None]
    m = 3 * scale  # the mirrored border bends the ramp there, for bicubic too
    err = np.abs(out - ideal)[m:-m, m:-m]
    assert err.max() < 0.25 / 255


@pytest.mark.skipif(not (DATASETS / "Set5").is_dir(), reason="Set5 not present (../shared/datasets/Set5)")
@pytest.mark.parametrize("scale", SCALES)
def test_shipped_model_reaches_published_fsrcnn_on_set5(scale):
    from model.evaluate import evaluate

    result = evaluate(DATASETS / "Set5", scale)
    assert result["psnr"] >= PUBLISHED_FSRCNN[scale]


@pytest.mark.skipif(not (DATASETS / "Set5").is_dir(), reason="Set5 not present (../shared/datasets/Set5)")
@pytest.mark.parametrize("scale", SCALES)
def test_turbo_stays_close_to_fast_on_set5(scale):
    from model.evaluate import evaluate

    fast = evaluate(DATASETS / "Set5", scale, MODELS / f"fast_x{scale}.onnx")
    turbo = evaluate(DATASETS / "Set5", scale, MODELS / f"turbo_x{scale}.onnx")
    assert turbo["psnr"] >= fast["psnr"] - TURBO_MAX_LOSS_DB
