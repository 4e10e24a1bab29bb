"""Decoding request bytes into pixels, with the checks that keep it safe.

Every upload pays for itself before it is decoded: only the formats the settings allow are opened
(``UPSCALER_INPUT_FORMATS``, passed to Pillow), the image's declared size is checked against the pixel limits
before any pixel is decoded (and Pillow's own decompression-bomb guard is set to the same limit, for containers
that decode a frame while they are opened), a multi-frame file is refused from its header, and a JPEG with more
scans than any encoder writes is refused from its markers.

Decoding applies the EXIF orientation and keeps what users expect back: the alpha channel, the ICC profile, the
EXIF block (orientation reset), grayscale stays grayscale and 16-bit PNGs stay 16-bit. PNGs of 8 or 16 bits are
read by :mod:`service.imageio.png_reader` (compiled; Pillow reads 16-bit colour as 8-bit), everything else by
Pillow: HEIF/HEIC through pillow-heif (libheif, which applies the container's rotation and mirroring, ``irot`` and
``imir``, itself and resets the EXIF orientation, so it is applied once), 10- and 12-bit HEIF as 16-bit pixels;
AVIF through Pillow's own plugin (libavif and dav1d, which report ``irot``/``imir`` as the EXIF orientation, applied
here like any other; in 8 bits, the only depth it decodes to). :mod:`service.imageio.encoding` writes the result
back with the same properties.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import TooLarge, UnsupportedImage
from service.imageio import png_reader
from service.imageio.encoding import OUTPUT_FORMATS
from service.imageio.jpeg_quality import JpegQuality, estimate_quality
from service.imageio.png_writer import SIGNATURE
from service.imageio.webp_quality import WebpQuality, read_quality
from service.output_size import OutputPlan, SizeRequest

__all__ = ["Compression", "Decoded", "Limits", "decode", "guard_pixels", "INPUT_FORMATS", "MAX_JPEG_SCANS"]

log = logging.getLogger("service.imageio.decoding")

# Pillow warns above its pixel limit and refuses above twice it; ``guard_pixels`` sets the limit to half the
# service's, so that Pillow refuses exactly what the service would. The warning says nothing the 413 does not.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def guard_pixels(max_input_pixels: int) -> None:
    """Set Pillow's own decompression-bomb guard to ``max_input_pixels``: it refuses a container's frame (ICO) over
    the limit before decoding it in open(). Pillow's limit is one per process, so the service sets it once, at
    start-up; ``decode`` checks the declared size itself either way."""
    Image.MAX_IMAGE_PIXELS = max(1, (max_input_pixels + 1) // 2)


# HEIF: only the primary picture is read; thumbnails, depth maps and other auxiliary images are not even listed.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "HEIF", "AVIF")  # Pillow's names; the default allow-list
MAX_JPEG_SCANS = 100  # progressive encoders write about 10 scans; each scan costs a pass over the whole image
_MAX_JPEG_SEGMENTS = 4096  # markers before the first frame's data ends: far more than any encoder writes
_ORIENTATION = 0x0112  # the EXIF tag
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I"}
Compression = JpegQuality | WebpQuality  # how compressed a lossy input is, as read from its file


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
    compression: Compression | None = None  # how compressed a lossy JPEG or WebP input is
    cicp: tuple[int, int] | None = None  # (colour primaries, transfer) of a HEIF's nclx box, where not sRGB's
    plan: OutputPlan | None = None  # the model scale and the final size, made from the header before decoding

    def take_pixels(self) -> np.ndarray:
        """Hand the pixels over (to the batcher) and drop this reference, so they can be freed early."""
        pixels, self.rgb = self.rgb, None
        return pixels

    def default_format(self) -> str:
        """The input's format where the service writes it; a HEIF photo comes back as JPEG (what every viewer
        opens, for a picture that was lossy already: PNG would be many times larger, and HEIC output would need an
        HEVC encoder with patents of its own); anything else as PNG."""
        fmt = (self.source_format or "").lower()
        if fmt == "heif":
            return "jpeg"
        return fmt if fmt in OUTPUT_FORMATS else "png"


def _open(data: bytes, formats: tuple[str, ...], max_input_pixels: int) -> Image.Image:
    if not data:
        raise UnsupportedImage("the request body is empty; send the image bytes")
    if data.startswith(b"\xff\xd8") and "JPEG" in formats:
        _check_jpeg_scans(data)
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        if data[4:8] == b"ftyp" and {"HEIF", "AVIF"} & set(formats):  # an ISO media file: HEIF, AVIF, or a video
            raise UnsupportedImage(
                "the HEIF/AVIF container could not be read: damaged, not a still image, or declaring a size past the "
                "decoder's own limit"
            ) from None
        raise UnsupportedImage(f"the body is not an image format this server decodes ({', '.join(formats)})") from None
    except Image.DecompressionBombError:
        raise TooLarge(f"the image holds more than {max_input_pixels} pixels, the most this server accepts") from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise UnsupportedImage(f"the image header could not be read ({type(exc).__name__})") from None


def _check_jpeg_scans(data: bytes) -> None:
    """Refuse a JPEG with more than MAX_JPEG_SCANS scans, counted from its markers before anything is decoded: each
    scan of a progressive JPEG makes the decoder walk every block of the image again, and an empty one is 10 bytes."""
    scans, segments, pos, end = 0, 0, 2, len(data)
    while pos + 4 <= end and segments < _MAX_JPEG_SEGMENTS:
        if data[pos] != 0xFF:  # libjpeg skips bytes that are not a marker (with a warning): so does the count
            pos = data.find(b"\xff", pos)
            if pos == -1:
                return
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            return
        segments += 1
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")  # the segment's length counts its own 2 bytes
        if marker != 0xDA:
            continue
        scans += 1
        if scans > MAX_JPEG_SCANS:
            raise UnsupportedImage(
                f"the JPEG has more than {MAX_JPEG_SCANS} scans, the most this server decodes; "
                "re-save it with a standard encoder"
            )
        pos = _after_entropy_coded_data(data, pos)
    if segments >= _MAX_JPEG_SEGMENTS:
        raise UnsupportedImage(
            f"the JPEG has more than {_MAX_JPEG_SEGMENTS} segments; re-save it with a standard encoder"
        )


# A marker after a scan's data: 0xFF followed by a byte that is not 0 (a stuffed 0xFF), a restart marker (0xD0-0xD7)
# or another 0xFF (fill). Searched in C: a scan of stuffed bytes must not cost a Python step per byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _after_entropy_coded_data(data: bytes, pos: int) -> int:
    """The position of the first marker after a scan's data."""
    found = _NEXT_MARKER.search(data, pos)
    return found.start() if found else len(data)


@dataclass(frozen=True)
class Limits:
    """What an upload may ask for: the pixels in, the pixels the model makes and the final result's, and the size
    it asks for against the model scales served."""

    max_input_pixels: int
    max_output_pixels: int
    size: SizeRequest = SizeRequest()
    scales: tuple[int, ...] = (2, 3, 4)


def _check_size(w: int, h: int, limits: Limits) -> OutputPlan:
    """The plan for a ``w`` x ``h`` image, once every size involved is within the limits: the input and the model's
    output (the final size is never larger on either side than the model's output, which it is resampled from)."""
    if w < 1 or h < 1:
        raise UnsupportedImage(f"the image is {w}x{h}; it needs at least one pixel")
    if w * h > limits.max_input_pixels:
        raise TooLarge(f"the image is {w}x{h} = {w * h} pixels; this server accepts at most {limits.max_input_pixels}")
    plan = limits.size.plan(w, h, limits.scales)
    s, most = plan.model_scale, limits.max_output_pixels
    if w * h * s * s > most:
        raise TooLarge(
            f"x{s} of {w}x{h} would be {w * h * s * s} pixels; this server makes at most {most}; "
            "ask for a smaller size or image"
        )
    return plan


def _check_frames(im: Image.Image) -> None:
    # is_animated looks for a second frame only; n_frames would walk every frame of the file (a TIFF's IFD chain).
    if getattr(im, "is_animated", False):
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


def _sixteen_bit_colour(data: bytes, im: Image.Image) -> Decoded | None:
    """A 16-bit RGB(A) PNG with metadata: the pixels from the reader, which skips the metadata chunks, and the
    metadata from Pillow, which has read the chunks before the pixels; None for one that must be turned (EXIF or XMP
    orientation), which Pillow does in 8 bits."""
    png = png_reader.parse(data, metadata=True)
    exif = im.info.get("exif") or (png.exif_after_data if png is not None else None)
    if _orientation(exif, im.info) != 1:
        return None
    pixels = None if png is None else png_reader.read(png)
    if pixels is None:
        raise UnsupportedImage("the 16-bit PNG's data is corrupt or truncated")
    decoded = _plain(pixels)
    decoded.icc_profile, decoded.exif = im.info.get("icc_profile"), exif
    return decoded


_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(?:="|>)\s*(\d)')


def _orientation(exif: bytes | None, info: dict) -> int:
    """The orientation of an EXIF block, else of the XMP packet in ``info``, as Pillow's getexif() reads them (which
    on a PNG would decode the whole image first, to look for chunks after the data)."""
    try:
        parsed = Image.Exif()
        parsed.load(exif or b"")
        if _ORIENTATION in parsed:
            return parsed[_ORIENTATION]
    except Exception:  # corrupt EXIF: keep the pixels as stored
        return 1
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp") or b""
    found = _XMP_ORIENTATION.search(xmp.encode() if isinstance(xmp, str) else xmp)
    return int(found[1]) if found else 1


def decode(data: bytes, limits: Limits, formats: tuple[str, ...] = INPUT_FORMATS) -> Decoded:
    """Decode request bytes of one of ``formats`` (Pillow's names), with the plan for the size asked for; raises
    UnsupportedImage (415), TooLarge (413) or BadParameter (422, a size that cannot be made) with a clear message,
    all but the last from the header, before any pixel is decoded."""
    plain = png_reader.parse(data) if "PNG" in formats else None
    if plain is not None:
        plan = _check_size(plain.width, plain.height, limits)
        pixels = png_reader.read(plain)
        if pixels is not None:
            return _planned(_plain(pixels), plan)
    im = _open(data, formats, limits.max_input_pixels)
    size = _upright_size(im)
    plan = _check_size(*size, limits)
    _check_frames(im)
    decoded = _decode_opened(data, im)
    if (decoded.width, decoded.height) != size:  # an orientation the header did not show (EXIF after a PNG's data)
        plan = _check_size(decoded.width, decoded.height, limits)
    return _planned(decoded, plan)


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """The size of the image once its EXIF orientation is applied, as far as the header tells: a size asked for is
    of the picture as it is seen."""
    w, h = im.size
    if im.format == "PNG":  # getexif() would decode a PNG to look for chunks after its data
        orientation = _orientation(im.info.get("exif"), im.info)
    else:
        try:
            orientation = im.getexif().get(_ORIENTATION, 1)
        except Exception:  # corrupt EXIF: kept as stored, as _oriented does
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _planned(decoded: Decoded, plan: OutputPlan) -> Decoded:
    decoded.plan = plan
    return decoded


def _decode_opened(data: bytes, im: Image.Image) -> Decoded:
    """The pixels and metadata of an image Pillow has opened and whose size has been checked."""
    try:
        if _is_sixteen_bit_colour_png(data) and (decoded := _sixteen_bit_colour(data, im)) is not None:
            return decoded
        if im.format == "HEIF" and im.info.get("bit_depth", 8) > 8:
            return _deep_heif(data, im)
        im.load()
        source_format = im.format
        tables = getattr(im, "quantization", None) if source_format == "JPEG" else None
        icc = im.info.get("icc_profile")
        if im.mode == "CMYK":
            icc = None  # a CMYK profile does not describe the RGB result
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
        compression=estimate_quality(tables) if tables else read_quality(data) if source_format == "WEBP" else None,
        cicp=_cicp(im.info),
    )


def _deep_heif(data: bytes, im: Image.Image) -> Decoded:
    """A 10- or 12-bit HEIF as 16-bit pixels (Pillow's plugin gives 8 bits), turned by libheif as Pillow's was,
    with the ICC profile and EXIF of ``im``."""
    heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
    pixels = np.asarray(heif)  # (H, W, C) uint16, the samples in the top bits
    pixels = pixels | (pixels >> im.info["bit_depth"])  # fill the low bits: full scale is 65535, as for 16-bit PNGs
    decoded = _plain(pixels if pixels.ndim == 3 else pixels[:, :, None])
    decoded.source_format, decoded.icc_profile, decoded.exif = "HEIF", im.info.get("icc_profile"), im.info.get("exif")
    decoded.cicp = _cicp(im.info)
    return decoded


_SRGB_CICP = {(1, 13), (2, 2), (1, 2), (2, 13)}  # BT.709 primaries with sRGB's transfer, or either unspecified


def _cicp(info: dict) -> tuple[int, int] | None:
    """The colour primaries and transfer of a HEIF's nclx box (ITU-T H.273 codes), where the file has no ICC profile
    and they are not sRGB's: what a PNG's cICP chunk carries. The pixels are RGB already, so the box's matrix is not
    needed."""
    nclx = info.get("nclx_profile")
    if not nclx or info.get("icc_profile"):
        return None
    cicp = (int(nclx.get("color_primaries", 2)), int(nclx.get("transfer_characteristics", 2)))
    return None if cicp in _SRGB_CICP else cicp


def _plain(pixels: np.ndarray) -> Decoded:
    """What the Pillow path makes of a PNG that ``png_reader`` read: no profile, no EXIF, alpha as an 'L' image (a
    float 'F' image for 16 bits, which the encoder resamples and rounds back)."""
    colour = pixels[:, :, :3] if pixels.shape[2] >= 3 else np.repeat(pixels[:, :, :1], 3, axis=2)
    alpha = None
    if pixels.shape[2] in (2, 4):
        plane = pixels[:, :, -1]
        alpha = Image.fromarray(plane.astype(np.float32) if plane.dtype == np.uint16 else plane)
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
