"""Decoding request bytes into pixels and encoding results, with the checks that keep it safe.

Decoding checks the image's declared size before any pixel is decoded
(decompression bombs), applies the EXIF orientation, and keeps what users
expect back: the alpha channel, the ICC profile, the EXIF block (orientation
reset), grayscale stays grayscale and 16-bit PNGs stay 16-bit. Pillow reads
16-bit RGB(A) PNGs as 8-bit, so those are decoded with pypng instead. Plain 8-bit
PNGs, the most common upload, are read by :mod:`service.png_reader`, twice as fast
as Pillow. PNG output is written by :mod:`service.png`, several times faster than
Pillow's encoder.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import png as pypng
from PIL import Image, ImageOps, UnidentifiedImageError

from service import png_reader
from service.errors import BadParameter, TooLarge, UnsupportedImage
from service.png import SIGNATURE, encode_png

__all__ = ["Decoded", "decode", "encode", "OUTPUT_FORMATS", "MEDIA_TYPES"]

log = logging.getLogger("service.codecs")

# Our own pixel limits are checked before decoding, so Pillow's global bomb check is redundant.
Image.MAX_IMAGE_PIXELS = None

OUTPUT_FORMATS = ("png", "jpeg", "webp")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP"}
_ORIENTATION = 0x0112  # the EXIF tag
_JPEG_MAX_EXIF = 65533  # one APP1 segment: 64 KiB minus its length field
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I"}


@dataclass
class Decoded:
    """An input image split into what the network sees and what is carried around it."""

    rgb: np.ndarray | None  # (H, W, 3) uint8, or uint16 for 16-bit PNGs; None once taken
    width: int
    height: int
    alpha: Image.Image | None  # the alpha channel ('L'), upscaled separately
    grayscale: bool  # convert the result back to one channel
    source_format: str | None  # Pillow's name of the input format (PNG, JPEG, ...)
    icc_profile: bytes | None
    exif: bytes | None

    def take_pixels(self) -> np.ndarray:
        """Hand the pixels over (to the batcher) and drop this reference, so they can be freed early."""
        pixels, self.rgb = self.rgb, None
        return pixels

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


def _check_size(w: int, h: int, scale: int, max_input_pixels: int, max_output_pixels: int) -> None:
    if w < 1 or h < 1:
        raise UnsupportedImage(f"the image is {w}x{h}; it needs at least one pixel")
    if w * h > max_input_pixels:
        raise TooLarge(f"the image is {w}x{h} = {w * h} pixels; this server accepts at most {max_input_pixels}")
    if w * h * scale * scale > max_output_pixels:
        raise TooLarge(
            f"x{scale} of {w}x{h} would be {w * h * scale * scale} pixels; "
            f"this server makes at most {max_output_pixels}; use a smaller scale or image"
        )


def _check_frames(im: Image.Image) -> None:
    if getattr(im, "is_animated", False) or getattr(im, "n_frames", 1) > 1:
        raise UnsupportedImage("animated and multi-frame images are not supported; send a single frame")


def _oriented(im: Image.Image) -> Image.Image:
    try:
        if im.getexif().get(_ORIENTATION, 1) == 1:
            return im  # exif_transpose would return a copy
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
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB")), alpha, False


def _is_sixteen_bit_colour_png(data: bytes) -> bool:
    """IHDR says 16 bits per sample and RGB or RGBA (Pillow would read it as 8-bit)."""
    return data[:8] == SIGNATURE and data[12:16] == b"IHDR" and data[24] == 16 and data[25] in (2, 6)


def _sixteen_bit_colour(data: bytes) -> tuple[np.ndarray, Image.Image | None]:
    """Decode a 16-bit RGB(A) PNG with pypng: uint16 RGB and, if present, the alpha as a float ('F') image."""
    width, height, rows, info = pypng.Reader(bytes=data).asDirect()
    pixels = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, info["planes"])
    alpha = Image.fromarray(pixels[:, :, 3].astype(np.float32)) if info["planes"] == 4 else None
    return np.ascontiguousarray(pixels[:, :, :3]), alpha


def decode(data: bytes, *, scale: int, max_input_pixels: int, max_output_pixels: int) -> Decoded:
    """Decode request bytes; raises UnsupportedImage (415) or TooLarge (413) with a clear message."""
    plain = png_reader.parse(data)
    if plain is not None:
        _check_size(plain.width, plain.height, scale, max_input_pixels, max_output_pixels)
        pixels = png_reader.read(plain)
        if pixels is not None:
            return _plain(pixels)
    im = _open(data)
    _check_size(*im.size, scale, max_input_pixels, max_output_pixels)
    _check_frames(im)
    try:
        im.load()
        source_format = im.format
        icc = im.info.get("icc_profile")
        if im.mode == "CMYK":
            icc = None  # a CMYK profile does not describe the RGB result
        if _is_sixteen_bit_colour_png(data) and im.getexif().get(_ORIENTATION, 1) == 1:
            (rgb, alpha), gray = _sixteen_bit_colour(data), False
        else:
            im = _oriented(im)
            rgb, alpha, gray = _split(im)
        exif = im.info.get("exif") or (im.getexif().tobytes() if len(im.getexif()) else None)
    except (TooLarge, UnsupportedImage):
        raise
    except Exception as exc:  # truncated or corrupt data
        raise UnsupportedImage(f"the image data is corrupt or truncated ({type(exc).__name__})") from None
    return Decoded(
        rgb=np.ascontiguousarray(rgb),
        width=rgb.shape[1],
        height=rgb.shape[0],
        alpha=alpha,
        grayscale=gray,
        source_format=source_format,
        icc_profile=icc,
        exif=exif,
    )


def _plain(pixels: np.ndarray) -> Decoded:
    """What the Pillow path makes of a plain PNG (``png_reader``): no profile, no EXIF, alpha as an 'L' image."""
    colour = pixels[:, :, :3] if pixels.shape[2] >= 3 else np.repeat(pixels[:, :, :1], 3, axis=2)
    alpha = Image.fromarray(pixels[:, :, -1]) if pixels.shape[2] in (2, 4) else None
    return Decoded(
        rgb=np.ascontiguousarray(colour),
        width=pixels.shape[1],
        height=pixels.shape[0],
        alpha=alpha,
        grayscale=pixels.shape[2] < 3,
        source_format="PNG",
        icc_profile=None,
        exif=None,
    )


def _color_planes(sr: np.ndarray, decoded: Decoded, fmt: str) -> np.ndarray:
    """(sH, sW, 3), or (sH, sW, 1) for grayscale inputs; 16 bits only where PNG can hold them."""
    color = sr
    if decoded.grayscale:
        color = sr.mean(axis=2, keepdims=True).round().astype(sr.dtype)
    if color.dtype == np.uint16 and fmt != "png":
        color = (color >> 8).astype(np.uint8)
    return color


def _alpha_plane(decoded: Decoded, width: int, height: int, dtype: np.dtype) -> np.ndarray | None:
    """The alpha channel upscaled with bicubic resampling (the network upscales colour only)."""
    if decoded.alpha is None:
        return None
    alpha = np.asarray(decoded.alpha.resize((width, height), Image.Resampling.BICUBIC))
    if decoded.alpha.mode == "F":  # 16-bit alpha, resampled in float
        alpha = np.clip(np.round(alpha), 0, 65535).astype(np.uint16)
        return alpha if dtype == np.uint16 else (alpha >> 8).astype(np.uint8)
    return alpha.astype(np.uint16) * 257 if dtype == np.uint16 else alpha


def encode(sr: np.ndarray, decoded: Decoded, *, fmt: str, quality: int, png_compress_level: int) -> bytes:
    """Encode the (sH, sW, 3) result, restoring alpha, grayscale, bit depth, ICC profile and EXIF.

    PNG goes through the service's own block-wise encoder (service.png), JPEG and WebP through Pillow.
    JPEG has no alpha channel, so alpha is dropped there.
    """
    if fmt not in OUTPUT_FORMATS:
        raise BadParameter(f"format must be one of {', '.join(OUTPUT_FORMATS)}")
    h, w = sr.shape[:2]
    color = _color_planes(sr, decoded, fmt)
    alpha = _alpha_plane(decoded, w, h, color.dtype) if fmt != "jpeg" else None
    if fmt == "png":
        return encode_png(color, alpha, level=png_compress_level, icc_profile=decoded.icc_profile, exif=decoded.exif)
    im = Image.fromarray(color[:, :, 0] if color.shape[2] == 1 else color)
    if alpha is not None:
        im = im.convert("LA" if im.mode == "L" else "RGBA")
        im.putalpha(Image.fromarray(alpha))
    params: dict = {"quality": quality}
    if decoded.icc_profile:
        params["icc_profile"] = decoded.icc_profile
    if decoded.exif and (fmt != "jpeg" or len(decoded.exif) <= _JPEG_MAX_EXIF):
        params["exif"] = decoded.exif
    elif decoded.exif:
        log.info("dropping %d bytes of EXIF: more than one JPEG APP1 segment holds", len(decoded.exif))
    buf = io.BytesIO()
    im.save(buf, format=_PIL_FORMAT[fmt], **params)
    return buf.getvalue()
