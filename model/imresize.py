"""MATLAB-compatible bicubic ``imresize`` in numpy.

Published super-resolution tables make low-resolution images with MATLAB's
``imresize(img, 1/s, 'bicubic')``: a Keys cubic kernel with a = -0.5,
widened by the scale when shrinking (antialiasing), borders handled by
symmetric mirroring, and the result rounded back to uint8. This module
reproduces that so our PSNR numbers can stand beside the published ones.
It needs only numpy, so evaluation and the service never import torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["imresize", "cubic", "contributions"]

_KERNEL_WIDTH = 4.0  # the cubic kernel's support, in source pixels


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's choice)."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and source indices for resizing one axis, as MATLAB computes them.

    Returns ``(weights, indices)``, both of shape (out_len, taps); indices are
    already mirrored into ``[0, in_len)``.
    """
    antialias = scale < 1
    width = _KERNEL_WIDTH / scale if antialias else _KERNEL_WIDTH
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in 1-based input coordinates
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based
    dist = u[:, None] - idx
    weights = scale * cubic(dist * scale) if antialias else cubic(dist)
    weights /= weights.sum(axis=1, keepdims=True)
    # MATLAB mirrors out-of-range indices symmetrically: [1..n, n..1] repeated.
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)  # drop all-zero columns, as MATLAB does
    return weights[:, keep], indices[:, keep]


def _resize_axis(img: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
    weights, indices = contributions(img.shape[axis], out_len, scale)
    moved = np.moveaxis(img, axis, 0)  # (L, ...)
    gathered = moved[indices]  # (out_len, taps, ...)
    w = weights.reshape(weights.shape + (1,) * (moved.ndim - 1))
    return np.moveaxis((gathered * w).sum(axis=1), 0, axis)


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) image by ``scale`` like MATLAB's bicubic imresize.

    uint8 input gives uint8 output (rounded, saturated, as MATLAB does);
    float input gives float64 output, unclipped.
    """
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {img.shape}")
    out_h = int(np.ceil(img.shape[0] * scale))
    out_w = int(np.ceil(img.shape[1] * scale))
    data = img.astype(np.float64)
    # MATLAB resizes the dimension with the smaller scale change first; scales are equal here,
    # so height goes first.
    data = _resize_axis(data, 0, out_h, scale)
    data = _resize_axis(data, 1, out_w, scale)
    if img.dtype == np.uint8:
        return np.clip(np.round(data), 0, 255).astype(np.uint8)
    return data
