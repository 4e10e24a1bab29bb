"""Encoding results: PNG (the service's own writer, 8 and 16 bits), JPEG, WebP and AVIF (Pillow; AVIF with libavif and
aom, 8 bits).

The result gets back what the input carried (:class:`service.imageio.decoding.Decoded`): alpha (upscaled
bicubically; JPEG drops it), grayscale, bit depth where the format holds it, the ICC profile and EXIF. An output
a format cannot hold is refused before any tile runs (:func:`check_output`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from service.errors import BadParameter, TooLarge
from service.imageio.png_writer import encode_png

if TYPE_CHECKING:
    from service.imageio.decoding import Decoded

__all__ = ["encode", "check_output", "OUTPUT_FORMATS", "MEDIA_TYPES"]

log = logging.getLogger("service.imageio.encoding")

OUTPUT_FORMATS = ("png", "jpeg", "webp", "avif")
# Each format's largest width or height: libjpeg's, libwebp's, and for AVIF what libavif (browsers' decoder included)
# reads back by default; aom writes larger AVIFs that nothing then opens.
_MAX_SIDE = {"png": 2**31 - 1, "jpeg": 65500, "webp": 16383, "avif": 32768}
_WEBP_SAFE_METHOD = 2
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
_JPEG_MAX_EXIF = 65533  # one APP1 segment: 64 KiB minus its length field


def check_output(width: int, height: int, fmt: str) -> None:
    """Refuse, before any tile runs, a ``width`` x ``height`` result that ``fmt`` cannot hold (WebP 16383 and JPEG
    65500 pixels a side)."""
    side = max(width, height)
    if side > _MAX_SIDE[fmt]:
        others = [f for f in OUTPUT_FORMATS if _MAX_SIDE[f] >= side]
        instead = f"ask for format={others[0]}" if others else "ask for a smaller size"
        raise TooLarge(
            f"the result would be {width}x{height}; {fmt.upper()} holds at most {_MAX_SIDE[fmt]} pixels a side; "
            f"{instead}, or a smaller size"
        )


def _color_planes(sr: np.ndarray, decoded: Decoded, fmt: str) -> np.ndarray:
    """(sH, sW, 3), or (sH, sW, 1) for grayscale inputs; 16 bits only where PNG can hold them."""
    color = sr
    if decoded.grayscale:
        color = sr.mean(axis=2, keepdims=True).round().astype(sr.dtype)
    if color.dtype == np.uint16 and fmt != "png":
        color = (color >> 8).astype(np.uint8)
    return color


def _alpha_rows(
    decoded: Decoded, width: int, height: int, dtype: np.dtype, box: tuple[float, ...] | None
) -> Callable[[int, int], np.ndarray] | None:
    """Rows ``y0:y1`` of the alpha channel (of the ``box`` of the input the result shows) upscaled with bicubic
    resampling (the network upscales colour only), at ``dtype``: made a band at a time, so that the PNG writer never
    holds the whole plane, and a 16-bit one is never whole in float (twice its size, and numpy's rounding twice
    more)."""
    if decoded.alpha is None:
        return None
    alpha = decoded.alpha
    left, top, right, bottom = box or (0, 0, *alpha.size)

    def rows(y0: int, y1: int) -> np.ndarray:
        band_box = (left, top + (bottom - top) * y0 / height, right, top + (bottom - top) * y1 / height)
        band = np.asarray(alpha.resize((width, y1 - y0), Image.Resampling.BICUBIC, box=band_box))
        if alpha.mode == "F":  # 16-bit alpha, resampled in float
            band = np.clip(np.rint(band), 0, 65535).astype(np.uint16)
            return band if dtype == np.uint16 else (band >> 8).astype(np.uint8)
        return band.astype(np.uint16) * 257 if dtype == np.uint16 else band

    return rows


def encode(
    sr: np.ndarray,
    decoded: Decoded,
    *,
    fmt: str,
    quality: int,
    png_compress_level: int,
    webp_effort: int = 2,
    avif_speed: int = 9,
    alpha_box: tuple[float, ...] | None = None,
) -> bytes:
    """Encode the (sH, sW, 3) result, restoring alpha, grayscale, bit depth, ICC profile and EXIF.

    PNG goes through the service's own block-wise encoder (service.png), JPEG and WebP through Pillow.
    JPEG has no alpha channel, so alpha is dropped there. ``webp_effort`` is libwebp's method (0-6), ``avif_speed``
    libavif's speed (0 slowest and smallest, 10 fastest). ``alpha_box``:
    the part of the input the result shows, in its pixels (all of it by default).
    """
    if fmt not in OUTPUT_FORMATS:
        raise BadParameter(f"format must be one of {', '.join(OUTPUT_FORMATS)}")
    h, w = sr.shape[:2]
    color = _color_planes(sr, decoded, fmt)
    alpha_rows = _alpha_rows(decoded, w, h, color.dtype, alpha_box) if fmt != "jpeg" else None
    if fmt == "png":
        return encode_png(
            color,
            alpha_rows,
            level=png_compress_level,
            icc_profile=decoded.icc_profile,
            exif=decoded.exif,
            cicp=decoded.cicp,
        )
    if decoded.cicp:
        log.info("dropping the colour space %s (H.273 primaries, transfer): %s states no nclx", decoded.cicp, fmt)
    alpha = alpha_rows(0, h) if alpha_rows else None
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
    if fmt == "webp":
        params["method"] = webp_effort
    if fmt == "avif":
        params["speed"] = avif_speed
    return _save(im, fmt, params)


def _save(im: Image.Image, fmt: str, params: dict) -> bytes:
    buf = io.BytesIO()
    try:
        im.save(buf, format=_PIL_FORMAT[fmt], **params)
    except ValueError:
        # libwebp's fastest methods (0 and 1) overflow their first partition on large images (encoding error 6);
        # method 2 is the fastest that does not.
        if fmt != "webp" or params["method"] >= _WEBP_SAFE_METHOD:
            raise
        log.info(
            "WebP method %d failed on %dx%d; encoding with method %d", params["method"], *im.size, _WEBP_SAFE_METHOD
        )
        return _save(im, fmt, params | {"method": _WEBP_SAFE_METHOD})
    return buf.getvalue()
