"""model.reshape: a neighbouring shape started from a trained network."""

from pathlib import Path

import numpy as np
import pytest
import torch

from model.network import SRNet, build, config_dict, macs_per_input_pixel, pad_for_inference
from model.reshape import main, reshape
from model.train import load_network


def upscale(net: SRNet, lr: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return net(torch.from_numpy(pad_for_inference(lr, net.context)))


@pytest.fixture
def lr() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, 20, 24), dtype=np.float32)


def trained_like(net: SRNet) -> SRNet:
    """``net`` with random non-zero slopes and biases, as training leaves them."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias") or p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=gen) * 0.2)
    return net


def test_added_mapping_layers_start_as_the_identity(lr):
    src = trained_like(build("fast", 2))
    dst = reshape(src, d=56, m=6)
    assert dst.config.m == 6 and dst.context == src.context + 2
    torch.testing.assert_close(upscale(dst, lr), upscale(src, lr), rtol=0, atol=1e-6)


def test_widened_shrunk_channels_start_unread_and_so_change_nothing(lr):
    src = trained_like(build("fast", 4))
    dst = reshape(src, d=56, m=6, s=20)
    assert (dst.config.s, dst.config.m) == (20, 6)
    torch.testing.assert_close(upscale(dst, lr), upscale(src, lr), rtol=0, atol=1e-6)
    new_rows = dst.body[2].weight[12:]  # the new channels are made (so training can use them at once)
    assert new_rows.abs().sum() > 0


def test_pruning_drops_the_channels_that_carry_nothing(lr):
    src = trained_like(build("fast", 3))
    with torch.no_grad():
        src.body[0].weight[-8:] = 0  # 8 extract channels that are always zero after the PReLU
        src.body[0].bias[-8:] = 0
        src.upsample.weight[:8] = 0  # 8 expand channels nothing reads
    dst = reshape(src, d=48, m=4)
    assert dst.config.d == 48
    torch.testing.assert_close(upscale(dst, lr), upscale(src, lr), rtol=0, atol=1e-6)


def test_deep_costs_what_fast_costs_within_one_percent():
    fast, deep = macs_per_input_pixel(build("fast", 2)), macs_per_input_pixel(build("deep", 2))
    assert abs(deep - fast) / fast < 0.01


def test_growing_feature_channels_is_refused():
    with pytest.raises(ValueError, match="prune"):
        reshape(build("fast", 2), d=64, m=4)


def test_the_written_checkpoint_loads_as_the_variant_and_says_where_it_came_from(tmp_path):
    src, fast = tmp_path / "src.pt", build("fast", 2)
    torch.save({"model_config": config_dict(fast), "model": fast.state_dict(), "variant": "fast"}, src)
    main(["--checkpoint", str(src), "--variant", "deep", "--out", str(tmp_path / "run" / "init.pt")])
    net, ckpt = load_network(tmp_path / "run" / "init.pt")
    assert net.config == build("deep", 2).config
    assert ckpt["lineage"][-1].startswith("reshaped from fast (d 56, s 12, m 4) to deep")


def test_an_exported_model_can_be_reshaped_and_its_lineage_names_the_file(tmp_path):
    shipped = Path(__file__).resolve().parents[2] / "export" / "models" / "fast_x2.onnx"
    main(["--checkpoint", str(shipped), "--variant", "quality", "--out", str(tmp_path / "init.pt")])
    net, ckpt = load_network(tmp_path / "init.pt")
    assert net.config == build("quality", 2).config
    assert ckpt["lineage"][0].startswith("fast_x2.onnx") and "to quality" in ckpt["lineage"][-1]
