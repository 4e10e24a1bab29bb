"""ONNX export: checker, metadata, dynamic shapes, parity with PyTorch, the derived files, model card."""

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from export.cpu import lower_for_cpu
from export.kernel_weights import write_native
from export.to_onnx import derived_max_abs_diff, export_onnx, parity
from export.to_onnx import main as export_main
from model.network import build, config_dict
from model.onnx_weights import weights_from_onnx
from service.runtime.engine import to_pixels
from service.runtime.fsrcnn_kernels import kernels_unavailable
from tests.conftest import needs_kernels


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    export_main(["--untrained", "--variant", "fast", "--scale", "3", "--out", str(out)])
    return out


def test_export_writes_model_derived_files_and_card(exported):
    names = {p.name for p in exported.iterdir()}
    derived = {"fast_x3_fp16.onnx", "fast_x3_cpu.onnx", "fast_x3_native.npz"}
    assert {"fast_x3.onnx", *derived, "fast_x3.json", "fast_x3.md"} <= names


def test_exported_model_passes_the_checker_with_opset_at_least_17(exported):
    model = onnx.load(exported / "fast_x3.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_exported_model_has_named_dynamic_io_and_metadata(exported):
    sess = ort.InferenceSession(str(exported / "fast_x3.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "lr" and out.name == "sr"
    assert all(isinstance(d, str) for d in (inp.shape[0], inp.shape[2], inp.shape[3]))
    meta = sess.get_modelmeta().custom_metadata_map
    assert (meta["variant"], meta["scale"], meta["context"]) == ("fast", "3", "7")


def test_onnx_runtime_matches_pytorch_at_two_sizes(tmp_path):
    torch.manual_seed(1)
    net = build("fast", 2)
    export_onnx(net, tmp_path / "m.onnx", "fast")
    assert parity(net, tmp_path / "m.onnx", sizes=((1, 30, 40), (3, 57, 21))) <= 1e-4


def test_fp16_graph_is_close_to_fp32(exported):
    x = np.random.default_rng(0).random((1, 3, 50, 50), dtype=np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"lr": x})[0]
    a, b = run(exported / "fast_x3.onnx"), run(exported / "fast_x3_fp16.onnx")
    assert b.dtype == np.float32 and np.abs(a - b).max() < 2e-3


def test_cpu_graph_computes_what_the_model_computes(exported):
    x = np.random.default_rng(0).random((2, 3, 41, 53), dtype=np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"lr": x})[0]
    assert np.abs(run(exported / "fast_x3.onnx") - run(exported / "fast_x3_cpu.onnx")).max() < 1e-5


def test_cpu_graph_also_gives_eight_bit_pixels_as_image_tiles(exported):
    x = np.random.default_rng(1).random((2, 3, 30, 30), dtype=np.float32)
    sess = ort.InferenceSession(str(exported / "fast_x3_cpu.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["sr", "pixels_uint8"]  # every output costs every run
    sr, pixels = sess.run(["sr", "pixels_uint8"], {"lr": x})
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 48, 48, 3)
    assert np.array_equal(pixels, to_pixels(sr.transpose(0, 2, 3, 1), np.uint8))


@pytest.mark.parametrize("derived", ["_cpu", "_fp16"])
def test_derived_files_record_the_model_they_were_written_from(exported, derived):
    meta = {p.key: p.value for p in onnx.load(exported / f"fast_x3{derived}.onnx").metadata_props}
    assert meta["source_sha256"] == hashlib.sha256((exported / "fast_x3.onnx").read_bytes()).hexdigest()


def test_cpu_graph_has_no_prelu_pixel_shuffle_or_learned_transposed_convolution(exported):
    derived = onnx.load(exported / "fast_x3_cpu.onnx")
    ops = [n.op_type for n in derived.graph.node]
    assert "PRelu" not in ops and "DepthToSpace" not in ops
    consts = {init.name: numpy_helper.to_array(init) for init in derived.graph.initializer}
    shuffles = [consts[n.input[1]] for n in derived.graph.node if n.op_type == "ConvTranspose"]
    assert len(shuffles) == 2 and all(set(np.unique(k)) == {0, 1} for k in shuffles)  # skip and upsampler
    assert {p.key: p.value for p in derived.metadata_props}["lowered_for"] == "CPUExecutionProvider"


def _odd_slopes_model(path, variant: str, scale: int) -> int:
    """Export a network with negative slopes, slopes above 1 and exactly 0 or 1 (all occur in training) and a
    far-from-bilinear upsampler to ``path``; return its context."""
    torch.manual_seed(scale)  # the same network on every run
    net = build(variant, scale)
    with torch.no_grad():
        for act in (m for m in net.modules() if isinstance(m, torch.nn.PReLU)):
            n = act.weight.numel()  # turbo: one slope per layer, exported as LeakyRelu
            slopes = torch.cat([torch.tensor([0.0, 1.0]), torch.linspace(-1.5, 1.8, n)])[:n] if n > 1 else [0.3]
            act.weight.copy_(torch.as_tensor(slopes))
        net.upsample.weight.normal_(0, 0.03)  # far from its bilinear start, so every tap matters
        net.upsample.bias.normal_(0, 0.03)
    export_onnx(net, path, variant)
    return net.context


@pytest.mark.parametrize(
    ("write", "derived"),
    [(lower_for_cpu, "m_cpu.onnx"), pytest.param(write_native, "m_native.npz", marks=needs_kernels)],
    ids=["cpu", "native"],
)
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("variant", ["fast", "turbo"])
def test_derived_files_are_exact_for_every_scale_and_slopes_of_every_sign(tmp_path, variant, scale, write, derived):
    context = _odd_slopes_model(tmp_path / "m.onnx", variant, scale)
    write(tmp_path / "m.onnx", tmp_path / derived)
    # Float rounding, relative to outputs that reach about 9 with these slopes (both files reach 1.5e-6 of that).
    x = np.random.default_rng(0).random((1, 3, 64 + 2 * context, 64 + 2 * context), dtype=np.float32)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    largest = np.abs(session.run(None, {"lr": x})[0]).max()
    assert derived_max_abs_diff(tmp_path / "m.onnx", tmp_path / derived, context) < 3e-6 * largest


def test_a_prelu_with_one_slope_for_all_channels_is_lowered_exactly(exported, tmp_path):
    """The exporter writes those as LeakyRelu; a graph made another way may keep them as PRelu."""
    model = onnx.load(exported / "fast_x3.onnx")
    prelu = next(n for n in model.graph.node if n.op_type == "PRelu")
    model.graph.initializer.append(numpy_helper.from_array(np.array([0.3], np.float32), "one_slope"))
    prelu.input[1] = "one_slope"
    onnx.save(model, tmp_path / "m.onnx")
    lower_for_cpu(tmp_path / "m.onnx", tmp_path / "m_cpu.onnx")
    assert derived_max_abs_diff(tmp_path / "m.onnx", tmp_path / "m_cpu.onnx", 7) < 1e-5


def _optimized_for_cpu(path, tmp_path) -> onnx.ModelProto:
    """The graph ONNX Runtime runs at optimisation level "all" on this CPU."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / f"optimized_{path.name}")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return onnx.load(opts.optimized_model_filepath)


def test_onnx_runtime_keeps_the_cpu_graph_in_its_blocked_layout_from_input_to_upsampler(exported, tmp_path):
    """Each reorder between NCHW and NCHWc is a pass over memory; the _cpu graph should need one, before the shuffle."""
    probe = helper.make_model(
        helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"])],
            "probe",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16, 8, 8])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16, 6, 6])],
            [numpy_helper.from_array(np.ones((16, 16, 3, 3), np.float32), "w")],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=8,  # what this ONNX Runtime reads, whatever the onnx package would write
    )
    onnx.save(probe, tmp_path / "probe.onnx")
    probed = _optimized_for_cpu(tmp_path / "probe.onnx", tmp_path).graph.node
    if not any(n.domain == "com.microsoft.nchwc" for n in probed):
        pytest.skip("ONNX Runtime has no NCHWc kernels for this CPU")
    nodes = _optimized_for_cpu(exported / "fast_x3_cpu.onnx", tmp_path).graph.node
    ops = [n.op_type for n in nodes]
    assert sum(n.op_type == "Conv" and n.domain == "com.microsoft.nchwc" for n in nodes) >= 7  # every body layer
    assert ops.count("ReorderOutput") == 1 and "ReorderInput" not in ops and "PRelu" not in ops


def test_rewriting_derived_files_refreshes_them_from_the_model_and_updates_the_card(exported, tmp_path):
    for name in ("fast_x3.onnx", "fast_x3.json"):
        (tmp_path / name).write_bytes((exported / name).read_bytes())
    export_main(["--derived", str(tmp_path / "fast_x3.onnx")])
    card = json.loads((tmp_path / "fast_x3.json").read_text())
    assert card["cpu_max_abs_diff"] < 1e-5 and card["fp16_max_abs_diff"] < 2e-3
    # Compared where the kernels run; recorded as not compared (None) where they cannot.
    assert card["native_max_abs_diff"] is None if kernels_unavailable() else card["native_max_abs_diff"] < 1e-5
    assert (tmp_path / "fast_x3_native.npz").is_file()
    assert (tmp_path / "fast_x3_cpu.onnx").is_file() and "cpu_max_abs_diff" in (tmp_path / "fast_x3.md").read_text()


def test_card_records_size_and_cost(exported):
    card = json.loads((exported / "fast_x3.json").read_text())
    assert card["parameters"] > 0 and card["macs_per_input_pixel"] > 0 and card["scale"] == 3


def test_exported_model_upsamples_with_a_learned_transposed_convolution(exported):
    ops = [n.op_type for n in onnx.load(exported / "fast_x3.onnx").graph.node]
    assert ops.count("ConvTranspose") == 1


def test_per_layer_slopes_export_as_leaky_relu_that_onnx_runtime_fuses(tmp_path):
    net = build("turbo", 2)
    export_onnx(net, tmp_path / "turbo.onnx", "turbo")
    ops = [n.op_type for n in onnx.load(tmp_path / "turbo.onnx").graph.node]
    assert "PRelu" not in ops and ops.count("LeakyRelu") == 3 + net.config.m
    assert parity(net, tmp_path / "turbo.onnx") < 1e-5


def test_per_channel_slopes_stay_prelu(exported):
    ops = [n.op_type for n in onnx.load(exported / "fast_x3.onnx").graph.node]
    assert ops.count("PRelu") == 3 + build("fast", 3).config.m and "LeakyRelu" not in ops


@pytest.mark.parametrize("variant", ["fast", "turbo"])
def test_weights_read_back_from_onnx_rebuild_the_exported_network(tmp_path, variant):
    torch.manual_seed(2)
    net = build(variant, 3)
    with torch.no_grad():  # slopes away from their 0.25 init, so a mix-up between layers shows
        for mod in net.modules():
            if isinstance(mod, torch.nn.PReLU):
                mod.weight.uniform_(-0.5, 0.5)
    export_onnx(net, tmp_path / "m.onnx", variant)
    config, state = weights_from_onnx(tmp_path / "m.onnx")
    assert config == config_dict(net)
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith("skip.")}
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_derived_files_of_a_model_without_a_card_can_be_rewritten(exported, tmp_path):
    (tmp_path / "custom_x3.onnx").write_bytes((exported / "fast_x3.onnx").read_bytes())
    export_main(["--derived", str(tmp_path / "custom_x3.onnx")])
    derived = {"custom_x3_fp16.onnx", "custom_x3_cpu.onnx", "custom_x3_native.npz"}
    assert {p.name for p in tmp_path.iterdir()} == {"custom_x3.onnx", *derived}
