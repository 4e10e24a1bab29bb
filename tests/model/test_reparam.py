"""Re-parameterizable blocks: each folds into one convolution that computes what its branches compute."""

import json

import pytest
import torch

from export.to_onnx import main as export_main
from model.network import build
from model.reparam import RepConv2d, RepConvTranspose2d, RepOptions, RepSRNet
from model.train import TrainConfig, load_network, train, training_network
from tests.model.test_training import images  # noqa: F401  (fixture: three small PNGs)


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``module`` in float64 with every learned parameter moved off its initial value, so no branch is zero."""
    gen = torch.Generator().manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for p in filter(lambda p: p.requires_grad, module.parameters()):  # not the fixed bicubic skip
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    return module


@pytest.mark.parametrize(
    "cin, cout, k, options",
    [
        (3, 56, 5, RepOptions()),  # FSRCNN's extract layer: edge filters centred in a 5x5 kernel
        (56, 12, 1, RepOptions()),  # shrink: no edge branches at 1x1
        (12, 12, 3, RepOptions()),  # mapping: with the identity
        (12, 12, 3, RepOptions(expand=4, edges=False)),
        (12, 56, 1, RepOptions(expand=1)),  # expand
    ],
)
def test_a_folded_convolution_block_equals_its_branches(cin, cout, k, options):
    block = perturbed(RepConv2d(cin, cout, k, options))
    x = torch.randn(2, cin, 11, 14, dtype=torch.float64)
    torch.testing.assert_close(block(x), block.branches(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("scale, k", [(2, 4), (3, 9), (4, 8)])
def test_a_folded_transposed_convolution_block_equals_its_branches(scale, k):
    block = perturbed(RepConvTranspose2d(56, 3, k, stride=scale, padding=scale + (k - scale) // 2))
    x = torch.randn(2, 56, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(block(x), block.branches(x), rtol=0, atol=1e-10)


def test_a_block_started_at_a_convolution_computes_that_convolution():
    conv = torch.nn.Conv2d(12, 12, 3).double()
    block = RepConv2d.starting_at(conv).double()
    x = torch.randn(1, 12, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(block.branches(x), conv(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_folded_network_is_the_plain_network_and_computes_what_the_branches_do(scale):
    rep = perturbed(RepSRNet.starting_at(build("fast", scale)), seed=scale)
    plain = rep.fold()
    assert type(plain).__name__ == "SRNet" and plain.config == rep.config
    x = torch.rand(2, 3, 24, 19, dtype=torch.float64)
    torch.testing.assert_close(plain(x), rep.branchwise(x), rtol=0, atol=1e-9)


def test_a_trained_plain_network_keeps_its_function_when_its_layers_become_blocks():
    net = build("fast", 3)
    x = torch.rand(1, 3, 30, 28)
    with torch.no_grad():
        torch.testing.assert_close(RepSRNet.starting_at(net).branchwise(x), net(x), rtol=0, atol=1e-5)


def test_a_reparam_run_checkpoints_branches_and_loads_as_the_folded_plain_network(images, tmp_path):  # noqa: F811
    cfg = TrainConfig(data=[str(images)], scale=2, out=str(tmp_path), batch=2, patch=8, steps=2, threads=1)
    train(TrainConfig(**{**cfg.__dict__, "reparam": True, "rep_expand": 3}))
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ckpt["reparam"] == {"expand": 3, "edges": True}
    rep, (plain, _) = training_network(ckpt), load_network(tmp_path / "last.pt")
    assert isinstance(rep, RepSRNet) and type(plain).__name__ == "SRNet"
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), rep.branchwise(x), rtol=0, atol=1e-5)


def test_export_of_a_reparam_checkpoint_ships_the_plain_graph_and_records_the_fold(images, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train(TrainConfig(data=[str(images)], scale=2, out=str(run), batch=2, patch=8, steps=2, threads=1, reparam=True))
    export_main(["--checkpoint", str(run / "last.pt"), "--out", str(tmp_path), "--name", "rep", "--no-fp16"])
    card = json.loads((tmp_path / "rep_x2.json").read_text())
    assert card["config"] == build("fast", 2).config.__dict__
    assert "folded vs branches max abs diff" in card["training"]["reparameterized"]


def test_a_reparam_checkpoint_starts_another_run_at_its_folded_network(images, tmp_path):  # noqa: F811
    first, second = tmp_path / "first", tmp_path / "second"
    cfg = TrainConfig(data=[str(images)], scale=2, batch=2, patch=8, steps=2, threads=1)
    train(TrainConfig(**{**cfg.__dict__, "out": str(first), "reparam": True}))
    still = {"lr": 0.0, "lr_min": 0.0, "warmup": 0}  # one step that moves nothing: the start is what is saved
    train(TrainConfig(**{**cfg.__dict__, **still, "out": str(second), "steps": 1, "init": str(first / "last.pt")}))
    (folded, _), (started, _) = load_network(first / "last.pt"), load_network(second / "last.pt")
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(started(x), folded(x), rtol=0, atol=1e-6)
