"""MATLAB-compatible bicubic imresize against reference values and the published bicubic PSNRs."""

import numpy as np
import pytest

from model.image_quality import mod_crop, psnr, rgb_to_y, ssim
from model.imresize import contributions, cubic, imresize
from tests.conftest import DATASETS


def test_cubic_kernel_matches_keys_a_minus_half():
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    np.testing.assert_allclose(cubic(x), [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0])


def test_half_scale_interior_weights_are_matlab_antialiased_bicubic():
    # MATLAB: [w, i] = contributions(16, 8, 0.5, @cubic, 4, true) gives these weights for interior pixels.
    weights, indices = contributions(16, 8, 0.5)
    expected = [-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875]
    np.testing.assert_allclose(weights[3], expected, atol=1e-12)
    np.testing.assert_array_equal(indices[3], np.arange(3, 11))  # centre at 6.5


def test_borders_mirror_symmetrically_like_matlab():
    _, indices = contributions(16, 8, 0.5)
    np.testing.assert_array_equal(indices[0], [2, 1, 0, 0, 1, 2, 3, 4])


def test_upscale_weights_are_plain_bicubic():
    weights, _ = contributions(8, 16, 2.0)
    # Output pixel 5 has its centre at input 2.25 (0-based): taps 1..4 at distances 1.25, 0.25, 0.75, 1.75.
    np.testing.assert_allclose(weights[5], cubic(np.array([1.25, 0.25, 0.75, 1.75])), atol=1e-12)


def test_uint8_in_gives_rounded_uint8_out():
    img = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = imresize(img, 0.5)
    assert out.dtype == np.uint8 and out.shape == (4, 4)


def test_flat_image_stays_flat():
    out = imresize(np.full((12, 9, 3), 0.3), 1 / 3)
    np.testing.assert_allclose(out, 0.3, atol=1e-12)


@pytest.mark.skipif(not (DATASETS / "Set5").is_dir(), reason="Set5 not present (../shared/datasets/Set5)")
@pytest.mark.parametrize("scale,published", [(2, 33.66), (3, 30.39), (4, 28.42)])
def test_bicubic_on_set5_matches_published_psnr(scale, published):
    from model.data import list_images, load_rgb

    scores = []
    for path in list_images(DATASETS / "Set5"):
        hr = mod_crop(load_rgb(path), scale)
        up = imresize(imresize(hr, 1 / scale), scale)
        scores.append(psnr(rgb_to_y(hr), rgb_to_y(up), shave=scale))
    assert abs(np.mean(scores) - published) <= 0.05


def test_psnr_and_ssim_of_identical_images():
    y = np.random.default_rng(0).uniform(16, 235, (32, 32))
    assert psnr(y, y) == float("inf")
    assert ssim(y, y) == pytest.approx(1.0)


def test_y_channel_uses_bt601_studio_range():
    rgb = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(rgb), [[16, 235]])
