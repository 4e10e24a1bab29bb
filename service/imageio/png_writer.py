"""A fast PNG encoder for the service's output, block by block from numpy arrays.

Pillow's PNG encoder tries every filter on every row and copies the image
into its own buffer first; at compression level 1 it still spends most of
its time on filtering. Upscaled images are smooth, so the 'Up' filter alone
compresses them almost as well, and numpy applies it to a block of rows at a
time. Rows are filtered and deflated in blocks, so besides the output only
one block of extra memory is needed.

Level 1, the default, deflates with the service's own run-length deflater
(``service.imageio.rle_deflate``): filtered rows of upscaled images are mostly small
numbers and runs, and it writes files within a few percent of ISA-L's level 1,
faster. Levels 2-3, and level 1 where the deflater was not compiled, are
Intel's ISA-L (``isal``), several times faster than zlib at a similar size
(``bench/results/codecs.json``). Level 0 stays zlib's: stored, not compressed
(ISA-L's level 0 still compresses, and can make noise bigger than raw).
Levels 4-9 use zlib, for the smallest files whatever the time. All write
standard zlib streams.

Supports 8- and 16-bit grey, grey + alpha, RGB and RGBA, with the ICC
profile (iCCP) and EXIF (eXIf) chunks.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from isal import isal_zlib

from service.imageio import rle_deflate

__all__ = ["COLOR_TYPE", "SIGNATURE", "encode_png"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey + alpha, RGB, RGBA)
_BLOCK_BYTES = 1 << 20  # raw bytes filtered and deflated per step
_UP = 2  # PNG filter type 'Up'
_ISAL_LEVELS = range(1, 4)


def _chunk(kind: bytes, data: bytes) -> list[bytes]:
    """A chunk as its parts, which the caller writes out (a megabyte IDAT is not copied into a joined chunk)."""
    return [struct.pack(">I", len(data)) + kind, data, struct.pack(">I", isal_zlib.crc32(data, isal_zlib.crc32(kind)))]


def _rows_as_bytes(block: np.ndarray) -> np.ndarray:
    """(h, W, C) uint8/uint16 -> (h, W*C*bytes) uint8, big-endian as PNG wants."""
    if block.dtype == np.uint16:
        block = block.astype(">u2", copy=False)
    return np.ascontiguousarray(block).reshape(block.shape[0], -1).view(np.uint8)


def _compressor(level: int):
    """A ``zlib.compressobj``-like deflater for the level (see the module's docstring)."""
    if level == 1 and rle_deflate.unavailable() is None:
        return rle_deflate.RunLengthDeflate()
    return (isal_zlib if level in _ISAL_LEVELS else zlib).compressobj(level)


def _exif_payload(exif: bytes) -> bytes:
    return exif[6:] if exif.startswith(b"Exif\x00\x00") else exif  # eXIf holds the bare TIFF structure


def encode_png(
    color: np.ndarray,
    alpha: np.ndarray | Callable[[int, int], np.ndarray] | None = None,
    *,
    level: int = 1,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    cicp: tuple[int, int] | None = None,
) -> bytes:
    """Encode (H, W, 1|3) ``color`` plus an optional (H, W) ``alpha`` of the same dtype (uint8 or uint16): the plane,
    or a function that makes its rows ``y0:y1``, called once per block, so that the whole plane need never exist."""
    if color.ndim != 3 or color.shape[2] not in (1, 3) or color.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected (H, W, 1|3) uint8/uint16 pixels, got {color.shape} {color.dtype}")
    h, w, c = color.shape
    channels = c + (alpha is not None)
    depth = 16 if color.dtype == np.uint16 else 8
    # Written as it is made: a list of the chunks joined at the end would hold the file twice.
    out = io.BytesIO()
    out.writelines([SIGNATURE, *_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, COLOR_TYPE[channels], 0, 0, 0))])
    if cicp:  # colour primaries and transfer (H.273), RGB (matrix 0), full range
        out.writelines(_chunk(b"cICP", bytes([*cicp, 0, 1])))
    if icc_profile:
        out.writelines(_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        out.writelines(_chunk(b"eXIf", _exif_payload(exif)))

    row_bytes = w * channels * depth // 8
    step = max(1, _BLOCK_BYTES // row_bytes)
    deflate = _compressor(level)
    previous = np.zeros((1, row_bytes), np.uint8)
    for y in range(0, h, step):
        block = color[y : y + step]
        if alpha is not None:
            rows_alpha = alpha(y, y + len(block)) if callable(alpha) else alpha[y : y + step]
            block = np.concatenate([block, rows_alpha[:, :, None]], axis=2)
        rows = _rows_as_bytes(block)
        filtered = np.empty((rows.shape[0], row_bytes + 1), np.uint8)
        filtered[:, 0] = _UP
        np.subtract(rows[:1], previous, out=filtered[:1, 1:])
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
        previous = rows[-1:].copy()
        data = deflate.compress(filtered)
        if data:
            out.writelines(_chunk(b"IDAT", data))
    out.writelines(_chunk(b"IDAT", deflate.flush()))
    out.writelines(_chunk(b"IEND", b""))
    return out.getvalue()  # the buffer itself, not a copy
