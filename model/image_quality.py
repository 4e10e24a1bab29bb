"""PSNR and SSIM on the Y channel, as the super-resolution literature measures them.

Y is ITU-R BT.601 luma in the 16-235 range (MATLAB's ``rgb2ycbcr``), computed
from uint8 RGB, and ``shave`` pixels are dropped at each border before
comparing. SSIM follows Wang et al. 2004: an 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255. numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BT601_LUMA", "rgb_to_y", "mod_crop", "psnr", "ssim"]

# Weights of R, G, B in BT.601 luma for 0-255 inputs, per 255 (MATLAB rgb2ycbcr); Y = 16 + sum(w * rgb) / 255.
BT601_LUMA = (65.481, 128.553, 24.966)


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> (H, W) BT.601 luma in [16, 235], rounded to integers.

    Rounded as MATLAB's ``rgb2ycbcr`` rounds for uint8 input; returned as float64.
    """
    x = rgb.astype(np.float64)
    wr, wg, wb = BT601_LUMA
    return np.round(16.0 + (wr * x[..., 0] + wg * x[..., 1] + wb * x[..., 2]) / 255.0)


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop an image so both sides are multiples of ``scale``."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _shave(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border > 0 else img


def psnr(y_ref: np.ndarray, y_test: np.ndarray, shave: int = 0) -> float:
    """PSNR in dB between two luma images on a 0-255 scale."""
    diff = _shave(y_ref, shave).astype(np.float64) - _shave(y_test, shave).astype(np.float64)
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    ax = np.arange(size) - (size - 1) / 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering with a 1-D kernel along both axes."""
    k = len(g)
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ g


def ssim(y_ref: np.ndarray, y_test: np.ndarray, shave: int = 0) -> float:
    """Mean SSIM between two luma images on a 0-255 scale."""
    a = _shave(y_ref, shave).astype(np.float64)
    b = _shave(y_test, shave).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_window()
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))
