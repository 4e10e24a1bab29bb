"""The network: shapes, the bicubic skip, one training step, the cost of the variants."""

import numpy as np
import pytest
import torch

from model.imresize import imresize
from model.network import VARIANTS, build, load_weights, macs_per_input_pixel, pad_for_inference
from model.train import train_step


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_is_scale_times_the_unpadded_input(variant, scale):
    net = build(variant, scale).eval()
    c = net.context
    x = torch.rand(2, 3, 13 + 2 * c, 9 + 2 * c)
    with torch.no_grad():
        assert net(x).shape == (2, 3, 13 * scale, 9 * scale)


def test_upsampler_is_a_transposed_convolution_with_kernel_divisible_by_stride():
    for scale in (2, 3, 4):
        up = build("fast", scale).upsample
        assert isinstance(up, torch.nn.ConvTranspose2d)
        assert up.stride == (scale, scale) and up.kernel_size[0] % scale == 0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_skip_path_is_matlab_bicubic_upscaling(scale):
    net = build("fast", scale).eval()
    lr = np.random.default_rng(scale).random((11, 14, 3))
    x = torch.from_numpy(pad_for_inference(lr.transpose(2, 0, 1)[None], net.context)).float()
    with torch.no_grad():
        skip = net.skip(x)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(skip, imresize(lr, scale), atol=1e-5)


def test_fast_variant_costs_at_most_25k_macs_per_pixel_like_fsrcnn():
    for scale in (2, 3, 4):
        assert macs_per_input_pixel(build("fast", scale)) <= 25_100


def test_turbo_is_fast_with_one_prelu_slope_per_layer():
    fast, turbo = build("fast", 3), build("turbo", 3)
    slopes = lambda n: [m.weight.numel() for m in n.body if isinstance(m, torch.nn.PReLU)]
    assert slopes(fast) == [56, 12, 12, 12, 12, 12, 56] and slopes(turbo) == [1] * 7
    assert macs_per_input_pixel(turbo) == macs_per_input_pixel(fast)


def test_checkpoints_with_the_old_transposed_conv_skip_still_load():
    trained = build("fast", 2)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("skip.")}
    state["skip.weight"] = torch.zeros(3, 1, 10, 10)  # how the skip was stored before its polyphase form
    fresh = build("fast", 2)
    load_weights(fresh, state)
    x = torch.rand(1, 3, 30, 30)
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))


def test_quality_variant_is_larger_than_fast():
    fast, quality = build("fast", 2), build("quality", 2)
    count = lambda n: sum(p.numel() for p in n.parameters())
    assert count(quality) > 2 * count(fast)


def test_unknown_variant_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="fast"):
        build("huge", 2)


def test_one_training_step_lowers_the_loss_on_a_tiny_synthetic_set():
    torch.manual_seed(0)
    net = build("fast", 2)
    c = net.context
    hr = torch.rand(4, 3, 32, 32)
    lr = torch.nn.functional.avg_pool2d(hr, 2)
    lr = torch.from_numpy(pad_for_inference(lr.numpy(), c))
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    first = train_step(net, opt, lr, hr)
    for _ in range(4):
        last = train_step(net, opt, lr, hr)
    assert last < first
