"""ONNX export: checker, metadata, dynamic shapes, parity with PyTorch, fp16 twin, model card."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.onnx import main as export_main
from export.onnx import parity
from model.network import build


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    export_main(["--untrained", "--variant", "fast", "--scale", "3", "--out", str(out)])
    return out


def test_export_writes_model_fp16_twin_and_card(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"fast_x3.onnx", "fast_x3_fp16.onnx", "fast_x3.json", "fast_x3.md"} <= names


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
    import torch

    torch.manual_seed(1)
    net = build("fast", 2)
    from export.onnx import export_onnx

    export_onnx(net, tmp_path / "m.onnx", "fast")
    assert parity(net, tmp_path / "m.onnx", sizes=((1, 30, 40), (3, 57, 21))) <= 1e-4


def test_fp16_twin_is_close_to_fp32(exported):
    x = np.random.default_rng(0).random((1, 3, 50, 50), dtype=np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"lr": x})[0]
    a, b = run(exported / "fast_x3.onnx"), run(exported / "fast_x3_fp16.onnx")
    assert b.dtype == np.float32 and np.abs(a - b).max() < 2e-3


def test_card_records_size_and_cost(exported):
    card = json.loads((exported / "fast_x3.json").read_text())
    assert card["parameters"] > 0 and card["macs_per_input_pixel"] > 0 and card["scale"] == 3
