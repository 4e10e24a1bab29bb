"""Resampling the model's output to the size a request asked for (:mod:`service.output_size`), before encoding.

One pass of Pillow's resampler per image, from the part of the model's output that is kept (``box``: all of it, or
the middle for ``fit=cover``) straight to the final size: 8-bit colour as one RGB image, 16-bit colour plane by
plane (Pillow resamples 16-bit images of one channel only). The filter is the one that scored best against the
original photos in ``bench/resampling.py`` (results in bench/results/resampling.json).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["resample", "FILTER"]

FILTER = Image.Resampling.LANCZOS


def resample(pixels: np.ndarray, width: int, height: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """(H, W, 3) uint8 or uint16 pixels, the ``box`` of them resampled to (height, width, 3)."""
    if pixels.dtype == np.uint8:
        return np.asarray(Image.fromarray(pixels).resize((width, height), FILTER, box=box))
    out = np.empty((height, width, pixels.shape[2]), pixels.dtype)
    for c in range(pixels.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(pixels[:, :, c]))  # 'I;16'
        out[:, :, c] = np.asarray(plane.resize((width, height), FILTER, box=box))
    return out
