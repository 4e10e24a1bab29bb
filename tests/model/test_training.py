"""The training command: checkpoints and log, resume, and fine-tuning a shipped ONNX model."""

import csv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from model.image_quality import BT601_LUMA
from model.network import build
from model.train import TrainConfig, _init_from, describe_run, load_network, loss_function, train

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
    assert "CPUs; torch on 1 threads" in ckpt["machine"]  # what the card says the run cost was measured on


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


@pytest.mark.parametrize(("codec", "subsamplings"), [("jpeg", ("4:2:0", "4:4:4")), ("webp", ("4:2:0",))])
def test_lossy_degradation_makes_copies_saved_at_qualities_of_its_range(codec, subsamplings):
    from model.data import LossyDegradation, lossy_roundtrip, make_pairs

    hr = (np.random.default_rng(1).random((64, 80, 3)) * 255).astype(np.uint8)
    clean = make_pairs([hr], scale=2, context=7)
    lossy = LossyDegradation(codec=codec, qualities=(30, 40), copies=3)
    compressed = make_pairs([hr], scale=2, context=7, lossy=lossy, seed=2)
    assert len(clean) == 1 and len(compressed) == 3
    assert all(p.lr.shape == clean[0].lr.shape and not np.array_equal(p.lr, clean[0].lr) for p in compressed)
    # The degradation is Pillow's encoder at the drawn quality: re-encoding the clean LR at some quality of the
    # range reproduces each copy's pixels exactly.
    lr = clean[0].lr[7:-7, 7:-7]
    candidates = [lossy_roundtrip(lr, codec, q, s) for q in range(30, 41) for s in subsamplings]
    for pair in compressed:
        assert any(np.array_equal(pair.lr[7:-7, 7:-7], c) for c in candidates)


def test_an_unknown_codec_is_refused():
    from model.data import LossyDegradation

    with pytest.raises(ValueError, match="codec"):
        LossyDegradation(codec="gif", qualities=(30, 40))


def test_a_jpeg_run_records_its_degradation_and_validates_on_held_out_images(images, tmp_path):
    cfg = TrainConfig(
        data=[str(images)],
        scale=2,
        out=str(tmp_path / "run"),
        batch=2,
        patch=8,
        threads=1,
        steps=2,
        val_every=2,
        jpeg=(40, 60),
        jpeg_copies=2,
        holdout=3,
    )
    best = train(cfg)
    _, ckpt = load_network(tmp_path / "run" / "last.pt")
    assert ckpt["train_config"]["jpeg"] == (40, 60) and ckpt["train_config"]["holdout"] == 3
    assert cfg.val_quality == 50 and np.isfinite(best)  # validated on the held-out image, at the range's middle


def test_a_webp_run_records_its_degradation(images, tmp_path):
    cfg = TrainConfig(
        data=[str(images)], scale=2, out=str(tmp_path / "run"), batch=2, patch=8, threads=1, steps=2, webp=(20, 40)
    )
    train(cfg)
    _, ckpt = load_network(tmp_path / "run" / "last.pt")
    assert ckpt["train_config"]["webp"] == (20, 40) and cfg.codec == "webp" and cfg.val_quality == 30
    assert describe_run(ckpt).endswith("WebP 20-40")


def test_luma_loss_scores_luma_errors_fully_and_chroma_errors_by_their_weight():
    hr = torch.full((1, 3, 4, 4), 0.5)
    luma_error = hr + 0.1  # a grey shift: all luma (BT.601 weights sum to 219/255)
    wr, wg, _ = BT601_LUMA
    chroma_error = hr + torch.tensor([0.1, -0.1 * wr / wg, 0.0]).view(1, 3, 1, 1)  # luma unchanged
    cfg = TrainConfig(loss="l1-luma", chroma_weight=0.25)
    loss = loss_function(cfg)
    assert loss(hr, hr).item() == 0
    assert loss(luma_error, hr).item() == pytest.approx(0.1 * 219 / 255 + 0.25 * 0.1, rel=1e-5)
    rgb_l1 = (chroma_error - hr).abs().mean().item()
    assert loss(chroma_error, hr).item() == pytest.approx(0.25 * rgb_l1, rel=1e-4)
