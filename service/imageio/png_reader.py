"""A fast reader for PNGs of 8 or 16 bits per sample: grey, grey + alpha, RGB or RGBA, interlaced or not.

Pillow inflates PNG data with the system's zlib and undoes the row filters a byte at a time, and it reads
16-bit colour as 8-bit. This reader inflates with ISA-L (which also compresses the service's output) and undoes
the filters in C (``service/imageio/csrc/png_unfilter.c``), both without the GIL, into 8- or 16-bit pixels
(``bench/results/codecs.json`` has the figures). Its cost is bounded by the header: memory by width x height
(checked against the service's limits before :func:`read`), time by one pass over the inflated rows.

It is strict rather than forgiving. :func:`parse` takes a file only if its chunks are ones it knows, every
CRC is right and the image data is one run of IDAT chunks followed by IEND. :func:`read` returns pixels only
if the data inflate to exactly the rows the header promises, each with a valid filter type. Otherwise both
return None, and the caller reads the file with Pillow, which decides whether it is usable and what to say if
not. So every file gets the same answer as before, only plain ones sooner.

16-bit colour is the exception: Pillow cannot keep its 16 bits, so for those files the caller takes the metadata
from Pillow and the pixels from ``parse(data, metadata=True)``, which also skips any ancillary chunk (and reads a
16-bit tRNS colour as alpha); there a None means the file is broken.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from isal import isal_zlib

from service.compiled import Library, load_library
from service.imageio.png_writer import COLOR_TYPE, SIGNATURE

__all__ = ["PlainPng", "parse", "read", "unavailable"]

_CHANNELS = {colour_type: channels for channels, colour_type in COLOR_TYPE.items()}  # samples per pixel
# Chunks before the image data that hold nothing the service keeps (Pillow only lists them in ``info``), at the
# lengths the specification gives them: Pillow refuses some shorter ones (a gAMA of 0 bytes), and refusing is its
# call. Any other chunk or length sends the file to Pillow: iCCP and eXIf (kept in the output), text (may hold EXIF
# or XMP, with an orientation), tRNS and PLTE (colours), APNG's frames, and what this reader does not know.
_IGNORED = {
    b"gAMA": {4},
    b"cHRM": {32},
    b"sRGB": {1},
    b"pHYs": {9},
    b"tIME": {7},
    b"sBIT": {1, 2, 3, 4},
    b"bKGD": {1, 2, 6},
}
_MAX_SIDE = 2**31 - 1  # the PNG specification's limit


# Adam7's passes: (first column, first row, column step, row step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_WHOLE = ((0, 0, 1, 1),)


@dataclass(frozen=True)
class PlainPng:
    """A readable PNG's header and its compressed image data."""

    width: int
    height: int
    channels: int  # 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA
    idat: tuple[memoryview, ...]  # the IDAT chunks' data, in order
    depth: int = 8  # bits per sample: 8 or 16
    interlaced: bool = False  # Adam7
    transparent: tuple[int, ...] | None = None  # a 16-bit grey or RGB tRNS colour: pixels of it get alpha 0
    exif_after_data: bytes | None = None  # an eXIf chunk after the image data (metadata=True)


@cache
def _library() -> tuple[Library | None, str | None]:
    return load_library(Path(__file__).parent, "png_unfilter")


def unavailable() -> str | None:
    """Why the reader cannot run in this process (its C part was not built), or None when it can."""
    return _library()[1]


def parse(data: bytes, *, metadata: bool = False) -> PlainPng | None:
    """The header and image data of ``data`` if it is a PNG that :func:`read` can decode, else None.

    ``metadata``: skip every ancillary chunk (the caller reads the metadata elsewhere) and take a 16-bit tRNS colour
    as transparency, instead of leaving such files to Pillow."""
    if not data.startswith(SIGNATURE) or unavailable() is not None:
        return None
    view, pos, header, idat, transparent, done, late_exif = (
        memoryview(data),
        len(SIGNATURE),
        None,
        [],
        None,
        False,
        None,
    )
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = view[pos + 8 : pos + 8 + length]
        if pos + 12 + length > len(data) or struct.unpack_from(">I", data, pos + 8 + length)[0] != isal_zlib.crc32(
            body, isal_zlib.crc32(kind)
        ):
            return None
        if header is None:
            if kind != b"IHDR" or (header := _header(body)) is None:
                return None
        elif kind == b"IDAT" and not done:
            idat.append(body)
        elif kind == b"IEND":
            return PlainPng(*header[:3], tuple(idat), *header[3:], transparent, late_exif) if idat else None
        elif metadata and kind == b"tRNS" and not idat:
            if header[3] != 16 or header[2] not in (1, 3) or length != 2 * header[2]:
                return None
            transparent = struct.unpack(f">{header[2]}H", body)
        elif metadata and kind == b"PLTE" and not idat and header[2] >= 3:
            pass  # a suggested palette for a true-colour image: nothing the pixels need
        elif metadata and kind[0] & 0x20 and kind != b"tRNS":  # ancillary: its first letter is lower case
            done = bool(idat)  # IDAT chunks must follow each other
            if done and kind == b"eXIf":
                late_exif = bytes(body)
        elif idat or length not in _IGNORED.get(kind, ()):  # only IDAT may follow IDAT, until IEND
            return None
        pos += 12 + length
    return None  # no IEND: truncated


def _header(ihdr: memoryview) -> tuple[int, int, int, int, bool] | None:
    """(width, height, channels, depth, interlaced) from an IHDR chunk of a PNG this reader decodes, or None."""
    if len(ihdr) != 13:
        return None
    width, height, depth, colour_type, compression, filtering, interlace = struct.unpack(">IIBBBBB", ihdr)
    readable = depth in (8, 16) and colour_type in _CHANNELS and compression == filtering == 0 and interlace in (0, 1)
    if not readable or not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        return None
    return width, height, _CHANNELS[colour_type], depth, bool(interlace)


def read(png: PlainPng) -> np.ndarray | None:
    """The (H, W, channels) pixels, uint8 or uint16 (channels + 1 with a tRNS colour), or None if the data are not
    exactly what the header promises.

    Memory is bounded by the header: check width x height against the service's limits before calling this.
    """
    bpp = png.channels * png.depth // 8  # bytes per pixel, the distance PNG's filters look back
    passes = _ADAM7 if png.interlaced else _WHOLE
    shapes = [(-(-(png.height - y0) // dy), -(-(png.width - x0) // dx)) for x0, y0, dx, dy in passes]
    size = sum(h * (1 + w * bpp) for h, w in shapes if h and w)  # each row: its filter type, then its bytes
    inflater = isal_zlib.decompressobj()
    try:
        # One byte more than the rows: a stream that holds more is refused without inflating all of it.
        rows = inflater.decompress(b"".join(png.idat), size + 1)
    except isal_zlib.error:
        return None
    if len(rows) != size or not inflater.eof or inflater.unused_data:
        return None
    raw = np.empty((png.height, png.width, bpp), np.uint8)
    unfilter = _library()[0]
    src, offset = unfilter.ffi.from_buffer("uint8_t[]", rows), 0
    for (x0, y0, dx, dy), (h, w) in zip(passes, shapes, strict=True):
        if not (h and w):
            continue  # an empty pass has no rows at all
        part = raw if len(passes) == 1 else np.empty((h, w, bpp), np.uint8)
        if unfilter.lib.png_unfilter(src + offset, h, w * bpp, bpp, unfilter.address(part)) != -1:
            return None  # a row with an unknown filter type
        if part is not raw:
            raw[y0::dy, x0::dx] = part
        offset += h * (1 + w * bpp)
    del rows, src  # the inflated rows: as large as the pixels
    if png.depth == 8:
        return raw
    pixels = raw.view(">u2").view(np.uint16)  # big-endian samples...
    if np.little_endian:
        pixels.byteswap(inplace=True)  # ... in this machine's order, without a copy
    if png.transparent is None:
        return pixels
    opaque = np.any(pixels != np.array(png.transparent, np.uint16), axis=2, keepdims=True)
    return np.concatenate([pixels, opaque.astype(np.uint16) * 65535], axis=2)
