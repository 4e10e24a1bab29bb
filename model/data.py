"""Training data: image folders -> aligned (LR with context, HR) patch batches.

LR images are made once per HR image with MATLAB-compatible bicubic
``imresize`` (the degradation published tables use); patches are then cut at
random, aligned positions, with the LR patch carrying ``context`` extra pixels
per side so the network's valid convolutions see real pixels only.

For models of compressed inputs, each LR image is also saved as JPEG or lossy
WebP (``LossyDegradation``) before patches are cut, so the block grid (8x8 for
JPEG, 4x4 transforms in 16x16 macroblocks for WebP) lies where an encoder puts
it: on the whole LR image, not on the patch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model.image_quality import mod_crop
from model.imresize import imresize

__all__ = [
    "IMAGE_SUFFIXES",
    "list_images",
    "split_holdout",
    "held_out_files",
    "load_rgb",
    "CODECS",
    "lossy_encode",
    "lossy_roundtrip",
    "degrade",
    "LossyDegradation",
    "ImagePair",
    "make_pairs",
    "PatchSampler",
]

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


def split_holdout(files: list[Path], every: int) -> tuple[list[Path], list[Path]]:
    """``(train, holdout)``: every ``every``-th file (from the 1st) is held out for validation; 0 = none."""
    if every <= 0:
        return files, []
    return [f for i, f in enumerate(files) if i % every], files[::every]


def held_out_files(folders: list[str | Path], every: int, of: list[str] | None = None) -> list[Path]:
    """The images ``model.train --data FOLDERS --holdout EVERY`` holds out, only those of the folders named ``of``
    (by folder name) if given: the images model choices are measured on."""
    _, held_out = split_holdout([f for folder in folders for f in list_images(folder)], every)
    return [f for f in held_out if not of or f.parent.name in of]


def load_rgb(path: str | Path) -> np.ndarray:
    """Load an image as an (H, W, 3) uint8 RGB array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


CODECS = ("jpeg", "webp")  # the lossy formats training and evaluation can save LR images in


def lossy_encode(rgb: np.ndarray, codec: str, quality: int, subsampling: str = "4:2:0") -> bytes:
    """An (H, W, 3) uint8 image saved as ``codec`` by Pillow.

    JPEG: libjpeg's IJG tables at ``quality``, chroma ``subsampling`` as given. WebP: libwebp's lossy encoder at
    ``quality`` with Pillow's defaults (method 4, always 4:2:0), what a Pillow or ``cwebp`` user gets.
    """
    buf = io.BytesIO()
    if codec == "jpeg":
        Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality), subsampling=subsampling)
    elif codec == "webp":
        Image.fromarray(rgb).save(buf, format="WEBP", quality=int(quality))
    else:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    return buf.getvalue()


def lossy_roundtrip(rgb: np.ndarray, codec: str, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """``lossy_encode``, decoded again: the pixels a decoder of that file sees."""
    with Image.open(io.BytesIO(lossy_encode(rgb, codec, quality, subsampling))) as im:
        return np.asarray(im.convert("RGB"))


def degrade(hr: np.ndarray, scale: int, quality: int | None = None, codec: str = "jpeg") -> np.ndarray:
    """The LR image of a (mod-cropped) HR image: MATLAB bicubic, then, if ``quality`` is given, saved as ``codec``
    at that quality (JPEG 4:2:0)."""
    lr = imresize(hr, 1 / scale)
    return lr if quality is None else lossy_roundtrip(lr, codec, quality)


@dataclass(frozen=True, kw_only=True)
class LossyDegradation:
    """Lossy compression of the training LR images, drawn per copy."""

    codec: str = "jpeg"  # "jpeg" or "webp"
    qualities: tuple[int, int]  # inclusive range of the encoder's quality, drawn uniformly for each copy
    copies: int = 4  # compressed versions of each LR image (each with its own quality and subsampling)
    share_444: float = 0.25  # JPEG: share saved without chroma subsampling; the rest 4:2:0, as cameras and Pillow

    def __post_init__(self) -> None:
        lo, hi = self.qualities
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"qualities must be 1 <= low <= high <= 100, got {self.qualities}")
        if self.copies < 1:
            raise ValueError(f"copies must be at least 1, got {self.copies}")

    def apply(self, lr: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        lo, hi = self.qualities
        return [
            lossy_roundtrip(
                lr,
                self.codec,
                int(rng.integers(lo, hi + 1)),
                "4:4:4" if rng.random() < self.share_444 else "4:2:0",
            )
            for _ in range(self.copies)
        ]


@dataclass(frozen=True)
class ImagePair:
    hr: np.ndarray  # (sH, sW, 3) uint8, mod-cropped
    lr: np.ndarray  # (H + 2c, W + 2c, 3) uint8, bicubic-downscaled, then mirror-padded by c


def make_pairs(
    images: list[np.ndarray],
    scale: int,
    context: int,
    rescales: tuple[float, ...] = (1.0,),
    lossy: LossyDegradation | None = None,
    seed: int = 0,
) -> list[ImagePair]:
    """Mod-crop each HR image (optionally also shrunk by each factor in ``rescales``) and degrade it.

    With ``lossy``, each HR image gets ``lossy.copies`` pairs (one per compressed LR) instead of one.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for img in images:
        for factor in rescales:
            hr = img if factor == 1.0 else imresize(img, factor)
            hr = mod_crop(hr, scale)
            if min(hr.shape[:2]) < 4 * scale:
                continue
            lr = imresize(hr, 1 / scale)
            for lr_k in lossy.apply(lr, rng) if lossy else [lr]:
                lr_k = np.pad(lr_k, ((context, context), (context, context), (0, 0)), mode="symmetric")
                pairs.append(ImagePair(hr=hr, lr=lr_k))
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
