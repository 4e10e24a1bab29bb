"""Training data: image folders -> aligned (LR with context, HR) patch batches.

LR images are made once per HR image with MATLAB-compatible bicubic
``imresize`` (the degradation published tables use); patches are then cut at
random, aligned positions, with the LR patch carrying ``context`` extra pixels
per side so the network's valid convolutions see real pixels only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model.imresize import imresize
from model.metrics import mod_crop

__all__ = ["IMAGE_SUFFIXES", "list_images", "load_rgb", "ImagePair", "make_pairs", "PatchSampler"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def list_images(folder: str | Path) -> list[Path]:
    """All png/jpg/bmp files under ``folder``, sorted for reproducibility."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no png/jpg/bmp images in {root}")
    return files


def load_rgb(path: str | Path) -> np.ndarray:
    """Load an image as an (H, W, 3) uint8 RGB array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@dataclass(frozen=True)
class ImagePair:
    hr: np.ndarray  # (sH, sW, 3) uint8, mod-cropped
    lr: np.ndarray  # (H + 2c, W + 2c, 3) uint8, bicubic-downscaled, then mirror-padded by c


def make_pairs(
    images: list[np.ndarray], scale: int, context: int, rescales: tuple[float, ...] = (1.0,)
) -> list[ImagePair]:
    """Mod-crop each HR image (optionally also shrunk by each factor in ``rescales``) and degrade it."""
    pairs = []
    for img in images:
        for factor in rescales:
            hr = img if factor == 1.0 else imresize(img, factor)
            hr = mod_crop(hr, scale)
            if min(hr.shape[:2]) < 4 * scale:
                continue
            lr = imresize(hr, 1 / scale)
            lr = np.pad(lr, ((context, context), (context, context), (0, 0)), mode="symmetric")
            pairs.append(ImagePair(hr=hr, lr=lr))
    return pairs


class PatchSampler:
    """Random aligned patches with flips and 90-degree rotations, as float32 NCHW in [0, 1]."""

    def __init__(self, pairs: list[ImagePair], scale: int, context: int, patch: int, seed: int = 0):
        self.pairs = [p for p in pairs if min(p.hr.shape[:2]) >= patch * scale]
        if not self.pairs:
            raise ValueError(f"no training image is at least {patch * scale} px on its short side")
        self.scale, self.context, self.patch = scale, context, patch
        areas = np.array([p.hr.shape[0] * p.hr.shape[1] for p in self.pairs], dtype=np.float64)
        self.weights = areas / areas.sum()  # sample images in proportion to their area
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(lr, hr)`` of shapes (N, 3, P + 2c, P + 2c) and (N, 3, sP, sP)."""
        s, c, p = self.scale, self.context, self.patch
        lrs, hrs = [], []
        for i in self.rng.choice(len(self.pairs), size=size, p=self.weights):
            pair = self.pairs[i]
            h, w = pair.hr.shape[0] // s, pair.hr.shape[1] // s
            y, x = self.rng.integers(0, h - p + 1), self.rng.integers(0, w - p + 1)
            lr = pair.lr[y : y + p + 2 * c, x : x + p + 2 * c]
            hr = pair.hr[y * s : (y + p) * s, x * s : (x + p) * s]
            k = self.rng.integers(4)
            lr, hr = np.rot90(lr, k), np.rot90(hr, k)
            if self.rng.random() < 0.5:
                lr, hr = lr[:, ::-1], hr[:, ::-1]
            lrs.append(lr)
            hrs.append(hr)
        to_tensor = lambda a: np.ascontiguousarray(np.stack(a).transpose(0, 3, 1, 2), dtype=np.float32) / 255
        return to_tensor(lrs), to_tensor(hrs)
