"""The training command: checkpoints and log, resume, and fine-tuning a shipped ONNX model."""

import csv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from model.network import build
from model.train import TrainConfig, _init_from, load_network, train

SHIPPED = Path(__file__).resolve().parents[2] / "export" / "models"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:72] / 72.0
    for i in range(3):
        smooth = np.stack([np.sin(3 * xx + i), np.cos(2 * yy - i), xx * yy], -1) * 0.4 + 0.5
        img = np.clip(smooth + rng.normal(0, 0.03, smooth.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def config(images, out: Path, **kw) -> TrainConfig:
    return TrainConfig(
        data=[str(images)], val=str(images), scale=2, out=str(out), batch=2, patch=8, val_every=2, threads=1, **kw
    )


def log_rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "log.csv").read_text().splitlines()))


def test_a_run_writes_checkpoints_and_a_log_row_per_validation(images, tmp_path):
    best = train(config(images, tmp_path, steps=4))
    rows = log_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert best == pytest.approx(max(float(r["val_psnr"]) for r in rows), abs=1e-3)  # the log rounds
    net, ckpt = load_network(tmp_path / "last.pt")
    assert ckpt["step"] == 4 and net.config == build("fast", 2).config


def test_resume_continues_from_the_last_checkpoint(images, tmp_path):
    train(config(images, tmp_path, steps=2))
    train(config(images, tmp_path, steps=4, resume=True))
    rows = log_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 4


@pytest.mark.parametrize("name", ["fast_x3", "turbo_x3"])
def test_init_from_a_shipped_onnx_model_reproduces_it(name):
    net = build(name.split("_")[0], 3)
    _init_from(net, str(SHIPPED / f"{name}.onnx"))
    x = np.random.default_rng(1).random((1, 3, 40, 36), dtype=np.float32)
    session = ort.InferenceSession(str(SHIPPED / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ours = net.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(ours - session.run(None, {"lr": x})[0]).max() < 1e-5
