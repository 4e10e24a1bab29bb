"""The service's own CPU kernels (service/runtime/csrc/fsrcnn.c, through service.runtime.fsrcnn_kernels): exact
against plain numpy and against ONNX Runtime on the shipped models, on every instruction set this CPU runs (the
test ids name it), and chosen by the engine only where they can run."""

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from service.runtime import backends as backends_module
from service.runtime import fsrcnn_kernels as native
from service.runtime.engine import Engine, to_pixels
from service.runtime.fsrcnn_kernels import NativeNetwork, kernels_unavailable
from tests.conftest import MODELS, SHIPPED_MODELS, needs_kernels, on_every_isa


def conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, slope: np.ndarray | None) -> np.ndarray:
    """Valid correlation of (Cin, H, W) with (Cout, Cin, k, k), + bias, then PReLU, in float64."""
    cout, _, k, _ = w.shape
    h, wd = x.shape[1] - k + 1, x.shape[2] - k + 1
    out = np.broadcast_to(b[:, None, None], (cout, h, wd)).astype(np.float64)
    for ky in range(k):
        for kx in range(k):
            out += np.einsum("oi,ihw->ohw", w[:, :, ky, kx], x[:, ky : ky + h, kx : kx + wd].astype(np.float64))
    return out if slope is None else np.where(out < 0, out * slope[:, None, None], out)


def assert_conv_is_the_plain_definition(isa: str, cin: int, cout: int, k: int, h: int, w: int) -> None:
    rng = np.random.default_rng(cin * cout + k)
    x = rng.standard_normal((cin, h + k - 1, w + k - 1)).astype(np.float32)
    weight = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    bias, slope = rng.standard_normal(cout).astype(np.float32), rng.uniform(-0.5, 1.5, cout).astype(np.float32)
    got = native._Conv(weight, bias, slope, isa)(x)
    assert got.shape == (cout, h, w)
    np.testing.assert_allclose(got, conv_reference(x, weight, bias, slope), rtol=1e-5, atol=1e-5)


@on_every_isa
@pytest.mark.parametrize(
    ("cin", "cout", "k", "h", "w"),
    [
        (3, 56, 5, 21, 40),  # the first layer's shape; a row tail of 8 pixels on AVX-512
        (56, 12, 1, 7, 16),  # an odd number of rows (the last row alone)
        (12, 12, 3, 5, 9),  # rows narrower than one AVX-512 register, a tail of 1 on AVX2
        (12, 27, 3, 12, 35),  # the x3 phases' channels
        (1, 16, 5, 9, 20),  # the x4 skip's
        (2, 4, 2, 3, 3),  # rows narrower than one AVX2 register
        (4, 6, 4, 10, 33),
        (3, 10, 3, 6, 18),
        (5, 7, 3, 4, 17),  # a prime number of channels: blocks of 1
    ],
)
def test_conv_with_prelu_is_the_plain_definition(isa, cin, cout, k, h, w):
    assert_conv_is_the_plain_definition(isa, cin, cout, k, h, w)


@on_every_isa
def test_every_block_size_of_the_instruction_set_is_the_plain_definition(isa):
    """Each kernel fsrcnn.c has for ``isa`` (a layer of that many channels), rows with and without a tail."""
    sizes = native._block_sizes(native._kernels(), native._isa_code(native._kernels(), isa))
    assert sizes and sizes == sorted(sizes, reverse=True)
    for block in sizes:
        conv = native._Conv(np.zeros((block, 3, 3, 3), np.float32), np.zeros(block, np.float32), None, isa)
        assert conv.block == block
        for width in (16, 21):
            assert_conv_is_the_plain_definition(isa, 3, block, 3, 5, width)


@on_every_isa
def test_conv_reads_a_crop_of_a_larger_array_in_place(isa):
    rng = np.random.default_rng(1)
    big = rng.standard_normal((3, 30, 41)).astype(np.float32)
    weight, bias = rng.standard_normal((4, 1, 5, 5)).astype(np.float32), np.zeros(4, np.float32)
    crop = big[1:2, 3:25, 6:38]  # one channel of three, rows and columns cut on both sides
    np.testing.assert_allclose(
        native._Conv(weight, bias, None, isa)(crop), conv_reference(crop, weight, bias, None), rtol=1e-5, atol=1e-5
    )


@on_every_isa
@pytest.mark.parametrize("model", SHIPPED_MODELS)  # the JPEG models too (x2 fast-jpeg-* are deep)
def test_shipped_native_twins_compute_the_shipped_model(isa, model):
    net = NativeNetwork(MODELS / f"{model}_native.npz", isa=isa)
    assert net.isa == isa
    session = ort.InferenceSession(str(MODELS / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for h, w in ((16, 16), (45, 31)):  # square and not; sides that leave row tails
        x = rng.random((2, 3, h + 2 * net.context, w + 2 * net.context), dtype=np.float32)
        expected = session.run(["sr"], {"lr": x})[0]
        got = net.run(x)
        assert got.shape == expected.shape == (2, 3, net.scale * h, net.scale * w)
        assert np.abs(got - expected).max() < 1e-5


@on_every_isa
@pytest.mark.parametrize("model", ["fast_x2", "fast_x3", "fast_x4", "fast-webp-q50_x2"])  # phases of 2, 3 and 2; deep
def test_the_pipelines_band_of_rows_changes_no_pixel(isa, model):
    rng = np.random.default_rng(1)
    reference = NativeNetwork(MODELS / f"{model}_native.npz", isa=isa, band=10_000)  # every map whole
    x = rng.random((1, 3, 50 + 2 * reference.context, 37 + 2 * reference.context), dtype=np.float32)
    expected = reference.run(x)
    for band in (1, 2, 3, 5, 8, 13):
        got = NativeNetwork(MODELS / f"{model}_native.npz", isa=isa, band=band).run(x)
        np.testing.assert_array_equal(got, expected, err_msg=f"band {band}")


@on_every_isa
def test_eight_bit_pixels_are_to_pixels_of_the_float_result_rounded_at_the_boundaries(isa):
    net = NativeNetwork(MODELS / "fast_x2_native.npz", isa=isa)
    x = np.random.default_rng(2).random((2, 3, 30, 27), dtype=np.float32)
    x[0, :, 10:20, 10:20] = 0  # a dark patch: outputs below 0 clip
    x[1, :, 5:25, 5:25] = 1  # a bright one: above 1 clips
    pixels = net.run_pixels(x)
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 32, 26, 3)
    assert np.array_equal(pixels, to_pixels(net.run(x).transpose(0, 2, 3, 1), np.uint8))
    assert pixels.min() == 0 and pixels.max() == 255


@needs_kernels
@pytest.mark.parametrize("channels", [3, 1])
def test_planes_from_pixels_are_numpys_cut_to_the_bit(channels):
    """Windows of a larger image (rows strided), every byte value, the scale the batcher uses."""
    image = np.random.default_rng(5).integers(0, 256, (50, 61, channels), dtype=np.uint8)
    image[0, :, 0] = np.arange(61) * 4 + 15  # 15 ... 255
    image[1, :, 0] = np.arange(61)
    windows = [image[0:20, 0:20], image[7:27, 30:50], image[30:50, 41:61], image[0:40:2, 0:20]]  # any row step
    expected = np.stack(windows).transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
    got = native.planes_from_pixels(windows, 1 / 255)
    assert got.dtype == np.float32 and got.flags.c_contiguous and np.array_equal(got, expected)


@needs_kernels
def test_planes_from_pixels_refuses_windows_it_cannot_read():
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8 windows"):
        native.planes_from_pixels([image[:8, :8], image[:8, :9]], 1 / 255)  # not the first window's shape
    with pytest.raises(ValueError, match="uint8 windows"):
        native.planes_from_pixels([image[:8, :8], image[:8, :16:2]], 1 / 255)  # every other pixel of its rows
    with pytest.raises(ValueError, match="uint8 windows"):
        native.planes_from_pixels([image[:8, :8].astype(np.uint16)], 1 / 255)


@on_every_isa
def test_runs_in_threads_at_once_give_the_same_result(isa):
    net = NativeNetwork(MODELS / "fast_x3_native.npz", isa=isa)
    x = np.random.default_rng(3).random((3, 3, 40, 40), dtype=np.float32)
    expected = net.run(x)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: net.run(x), range(8)))
    assert all(np.array_equal(r, expected) for r in results)


@needs_kernels
def test_the_engine_runs_every_shipped_model_natively_on_the_best_instruction_set_of_this_cpu():
    engine = Engine(MODELS, prefer_gpu=False, tile=16)
    assert {engine.kernels(key) for key in engine.specs} == {"native"}
    assert {engine.instruction_set(key) for key in engine.specs} == {native.instruction_sets()[0]}
    assert all(engine.makes_pixels(key, np.uint8) and not engine.makes_pixels(key, np.uint16) for key in engine.specs)


@needs_kernels
def test_models_on_the_native_kernels_keep_no_onnxruntime_session():
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=False)
    assert engine.kernels(("fast", 2)) == "native" and not hasattr(engine.backends[("fast", 2)], "session")


@needs_kernels
def test_a_native_twin_with_shapes_that_do_not_fit_together_is_refused(tmp_path):
    with np.load(MODELS / "fast_x2_native.npz") as f:
        arrays = dict(f)
    arrays["phases.lag"] = np.array([0, 2], np.int32)  # the phases' windows would end past the features
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="run past the features"):
        NativeNetwork(tmp_path / "bad.npz")


def test_a_native_twin_that_cannot_be_used_leaves_the_model_to_onnxruntime(tmp_path, caplog):
    for name in ("fast_x2.onnx", "fast_x2_native.npz"):
        shutil.copy(MODELS / name, tmp_path / name)
    with np.load(tmp_path / "fast_x2_native.npz") as f:
        arrays = dict(f)
    del arrays["conv3.slope"]
    np.savez(tmp_path / "fast_x2_native.npz", **arrays)
    engine = Engine(tmp_path, prefer_gpu=False, tile=16)
    assert engine.kernels(("fast", 2)) == "onnxruntime"
    x = np.random.default_rng(5).random((1, 3, 30, 30), dtype=np.float32)
    assert engine.run_pixels(("fast", 2), x, np.uint8).shape == (1, 32, 32, 3)
    if kernels_unavailable() is None:
        assert "ignoring fast_x2_native.npz" in caplog.text


def test_onnxruntime_can_be_asked_for():
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, cpu_kernels="onnxruntime")
    assert engine.kernels(("fast", 2)) == "onnxruntime" and not any(
        b.name == "native" for b in engine.backends.values()
    )


def test_where_the_kernels_cannot_run_onnxruntime_runs_and_the_log_says_why(monkeypatch, caplog):
    monkeypatch.setattr(backends_module, "kernels_unavailable", lambda: "this CPU has no AVX-512")
    caplog.set_level(logging.INFO, logger="service.runtime")
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, tile=16)
    assert engine.kernels(("fast", 2)) == "onnxruntime"
    assert "native kernels cannot: this CPU has no AVX-512" in caplog.text
    x = np.random.default_rng(4).random((1, 3, 30, 30), dtype=np.float32)
    assert engine.run_pixels(("fast", 2), x, np.uint8).shape == (1, 32, 32, 3)


@needs_kernels
def test_several_threads_per_run_keep_onnxruntime(caplog):
    caplog.set_level(logging.INFO, logger="service.runtime")
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, threads=2, workers=1)
    assert engine.kernels(("fast", 2)) == "onnxruntime"
    assert "2 threads per run were asked for" in caplog.text


def test_a_native_twin_left_behind_by_a_replaced_model_is_not_used(tmp_path, caplog):
    shutil.copy(MODELS / "fast_x2_native.npz", tmp_path / "fast_x2_native.npz")  # written from the shipped fast_x2
    shutil.copy(MODELS / "fast_x3.onnx", tmp_path / "fast_x2.onnx")  # ... which is now another model
    engine = Engine(tmp_path, prefer_gpu=False)
    (key,) = engine.specs
    assert engine.specs[key].kernel_weights_path is None and engine.kernels(key) == "onnxruntime"
    assert "ignoring fast_x2_native.npz" in caplog.text


@on_every_isa
def test_an_instruction_set_can_be_asked_for(isa):
    engine = Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, tile=16, cpu_kernels=isa)
    assert engine.kernels(("fast", 2)) == "native" and engine.instruction_set(("fast", 2)) == isa


@pytest.mark.parametrize("isa", [isa for isa in native.ISA_NAMES if isa not in native.instruction_sets()] or ["-"])
def test_an_instruction_set_this_cpu_lacks_is_an_error_not_a_fallback(isa):
    if isa == "-":
        pytest.skip("this CPU runs every instruction set the kernels are compiled for")
    with pytest.raises(ValueError, match=f"cannot run on {isa}"):
        Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, tile=16, cpu_kernels=isa)


@needs_kernels
def test_a_network_for_an_instruction_set_this_cpu_lacks_is_refused():
    with pytest.raises(ValueError, match="cannot run the native kernels on 'sse2'"):
        NativeNetwork(MODELS / "fast_x2_native.npz", isa="sse2")


def test_an_unknown_kernel_choice_is_refused():
    with pytest.raises(ValueError, match="cpu_kernels"):
        Engine(MODELS / "fast_x2.onnx", prefer_gpu=False, cpu_kernels="fastest")
