"""Decoding request bytes into pixels and encoding results, with the checks that keep it safe.

Decoding checks the image's declared size before any pixel is decoded
(decompression bombs), applies the EXIF orientation, and keeps what users
expect back: the alpha channel, the ICC profile, the EXIF block (orientation
reset), grayscale stays grayscale and 16-bit grayscale stays 16-bit. Pillow
reads 16-bit RGB PNGs as 8-bit RGB, so those come back 8-bit.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import BadParameter, TooLarge, UnsupportedImage

__all__ = ["Decoded", "decode", "encode", "OUTPUT_FORMATS", "MEDIA_TYPES"]

log = logging.getLogger("service.codecs")

# Our own pixel limits are checked before decoding, so Pillow's global bomb check is redundant.
Image.MAX_IMAGE_PIXELS = None

OUTPUT_FORMATS = ("png", "jpeg", "webp")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I"}


@dataclass
class Decoded:
    """An input image split into what the network sees and what is carried around it."""

    rgb: np.ndarray  # (H, W, 3) uint8, or uint16 for 16-bit grayscale
    alpha: Image.Image | None  # the alpha channel ('L'), upscaled separately
    grayscale: bool  # convert the result back to one channel
    source_format: str | None  # Pillow's name of the input format (PNG, JPEG, ...)
    icc_profile: bytes | None
    exif: bytes | None

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def max_value(self) -> int:
        return 65535 if self.rgb.dtype == np.uint16 else 255

    def default_format(self) -> str:
        fmt = (self.source_format or "").lower()
        return fmt if fmt in OUTPUT_FORMATS else "png"


def _open(data: bytes) -> Image.Image:
    if not data:
        raise UnsupportedImage("the request body is empty; send the image bytes")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedImage(
            "the body is not an image format we can decode (PNG, JPEG, WebP, BMP, GIF, TIFF)"
        ) from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise UnsupportedImage(f"the image header could not be read ({type(exc).__name__})") from None


def _check_size(im: Image.Image, scale: int, max_input_pixels: int, max_output_pixels: int) -> None:
    w, h = im.size
    if w < 1 or h < 1:
        raise UnsupportedImage(f"the image is {w}x{h}; it needs at least one pixel")
    if w * h > max_input_pixels:
        raise TooLarge(f"the image is {w}x{h} = {w * h} pixels; this server accepts at most {max_input_pixels}")
    if w * h * scale * scale > max_output_pixels:
        raise TooLarge(
            f"x{scale} of {w}x{h} would be {w * h * scale * scale} pixels; "
            f"this server makes at most {max_output_pixels}; use a smaller scale or image"
        )
    if getattr(im, "is_animated", False) or getattr(im, "n_frames", 1) > 1:
        raise UnsupportedImage("animated and multi-frame images are not supported; send a single frame")


def _oriented(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # corrupt EXIF: keep the pixels as stored
        log.info("ignoring unreadable EXIF orientation")
        return im


def _split(im: Image.Image) -> tuple[np.ndarray, Image.Image | None, bool]:
    """Pixels for the network, the alpha channel, and whether the image is grayscale."""
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        gray = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
        return np.repeat(gray[:, :, None], 3, axis=2), None, True
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("1", "L", "LA", "La"):
        alpha = im.getchannel("A") if "A" in im.getbands() else None
        gray = np.asarray(im.convert("L"))
        return np.repeat(gray[:, :, None], 3, axis=2), alpha, True
    alpha = im.getchannel("A") if "A" in im.getbands() and im.mode in ("RGBA", "RGBa") else None
    return np.asarray(im.convert("RGB")), alpha, False


def decode(data: bytes, *, scale: int, max_input_pixels: int, max_output_pixels: int) -> Decoded:
    """Decode request bytes; raises UnsupportedImage (415) or TooLarge (413) with a clear message."""
    im = _open(data)
    _check_size(im, scale, max_input_pixels, max_output_pixels)
    try:
        im.load()
        source_format = im.format
        icc = im.info.get("icc_profile")
        im = _oriented(im)
        if im.mode == "CMYK":
            icc = None  # a CMYK profile does not describe the RGB result
        rgb, alpha, gray = _split(im)
        exif = im.info.get("exif") or (im.getexif().tobytes() if len(im.getexif()) else None)
    except (TooLarge, UnsupportedImage):
        raise
    except Exception as exc:  # truncated or corrupt data
        raise UnsupportedImage(f"the image data is corrupt or truncated ({type(exc).__name__})") from None
    return Decoded(
        rgb=np.ascontiguousarray(rgb),
        alpha=alpha,
        grayscale=gray,
        source_format=source_format,
        icc_profile=icc,
        exif=exif,
    )


def encode(sr: np.ndarray, decoded: Decoded, *, fmt: str, quality: int, png_compress_level: int) -> bytes:
    """Encode the (sH, sW, 3) result, restoring alpha, grayscale, bit depth, ICC profile and EXIF."""
    if fmt not in OUTPUT_FORMATS:
        raise BadParameter(f"format must be one of {', '.join(OUTPUT_FORMATS)}")
    h, w = sr.shape[:2]
    if decoded.grayscale:
        gray = sr.mean(axis=2, dtype=np.float64).round().astype(sr.dtype)
        if gray.dtype == np.uint16 and fmt != "png":  # only PNG holds 16 bits
            gray = (gray >> 8).astype(np.uint8)
        im = Image.fromarray(gray)  # 'L', or 'I;16' for uint16
    else:
        im = Image.fromarray(sr)
    if decoded.alpha is not None and fmt != "jpeg":  # JPEG has no alpha: it is dropped
        alpha = decoded.alpha.resize((w, h), Image.Resampling.BICUBIC)
        im = im.convert("LA" if im.mode == "L" else "RGBA")
        im.putalpha(alpha)
    params: dict = {}
    if decoded.icc_profile:
        params["icc_profile"] = decoded.icc_profile
    if decoded.exif:
        params["exif"] = decoded.exif
    if fmt == "png":
        params["compress_level"] = png_compress_level
    else:
        params["quality"] = quality
    buf = io.BytesIO()
    im.save(buf, format=_PIL_FORMAT[fmt], **params)
    return buf.getvalue()
