"""Small files made to cost a decoder the most memory or time, one maker per class of hostile upload.

tests/reliability/test_hostile.py sends each to the service and checks that it is answered quickly with bounded
memory; bench/memory.py measures the server's peak memory on the worst of them. Everything is made in code.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import png as pypng
from PIL import Image

__all__ = [
    "ico_with_png_frame",
    "icns_claiming_small",
    "psd_claiming",
    "sixteen_bit_paeth_zeros_bad_crc",
    "sixteen_bit_interlaced",
    "jpeg_with_scans",
    "tiff_pages",
    "mpo",
    "png_with_huge_exif",
    "png_with_zlib_bomb_profile",
    "with_declared_size",
    "heic_claiming",
    "avif_claiming",
    "encoded",
]


def encoded(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def smooth(h: int, w: int, seed: int = 0) -> Image.Image:
    """A smooth colour picture: what a photo's decoder sees, in a small file."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(5 * xx + c + seed) * np.cos(4 * yy - c) for c in range(3)], -1) * 0.4 + 0.5
    return Image.fromarray((img * 255).astype(np.uint8))


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_rows(row_bytes: int, rows: int, filter_type: int = 0, level: int = 1) -> bytes:
    """zlib stream of ``rows`` rows of zeros, each led by its filter type, made without holding them all."""
    deflate, row = zlib.compressobj(level), bytes([filter_type]) + bytes(row_bytes)
    per_block = max(1, (1 << 20) // len(row))
    parts, left = [], rows
    while left:
        n = min(left, per_block)
        parts.append(deflate.compress(row * n))
        left -= n
    return b"".join(parts) + deflate.flush()


def png_of(width: int, height: int, depth: int, colour: int, stream: bytes, before: bytes = b"") -> bytes:
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + before + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def ico_with_png_frame(side: int) -> bytes:
    """An ICO whose one frame is a PNG of side x side grey zeros: Pillow decodes it while opening the file."""
    frame = png_of(side, side, 8, 0, zero_rows(side, side))
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(frame), 22) + frame


def icns_claiming_small() -> bytes:
    """An ICNS container (its directory says 16 x 16, its frame is what load() decodes)."""
    frame = png_of(8192, 8192, 8, 0, zero_rows(8192, 8192))
    entry = b"ic10" + struct.pack(">I", 8 + len(frame)) + frame
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def sixteen_bit_paeth_zeros_bad_crc() -> bytes:
    """4096² RGBA, 16 bits, Paeth-filtered zeros (140 KB), a text chunk and a bad CRC on the last IDAT."""
    stream = zero_rows(4096 * 8, 4096, filter_type=4, level=9)
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 4096, 4096, 16, 6, 0, 0, 0)) + chunk(b"tEXt", b"a\x00b")
    last = chunk(b"IDAT", stream[-10:])
    return (
        b"\x89PNG\r\n\x1a\n"
        + ihdr
        + chunk(b"IDAT", stream[:-10])
        + last[:-1]
        + bytes([last[-1] ^ 1])
        + chunk(b"IEND", b"")
    )


def sixteen_bit_interlaced(side: int = 2048) -> bytes:
    """A valid, interlaced 16-bit RGB PNG: expensive, and served."""
    pixels = (np.asarray(smooth(side, side)).astype(np.uint16) * 257).reshape(side, side * 3)
    buf = io.BytesIO()
    pypng.Writer(side, side, greyscale=False, bitdepth=16, interlace=True, compression=1).write(buf, pixels)
    return buf.getvalue()


def jpeg_with_scans(scans: int) -> bytes:
    """A progressive 1024² JPEG followed by ``scans`` empty DC refinement scans (10 bytes each) before its end."""
    data = encoded(smooth(1024, 1024), "JPEG", progressive=True, quality=80)
    empty_scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x10"
    return data[:-2] + empty_scan * scans + data[-2:]


def tiff_pages(pages: int) -> bytes:
    frames = [smooth(8, 8, seed=i) for i in range(pages)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def mpo() -> bytes:
    frames = [smooth(32, 32, seed=i) for i in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def png_with_huge_exif() -> bytes:
    """40 000 IFD entries of EXIF in one eXIf chunk: every entry is parsed when the orientation is read."""
    count = 40_000
    entries = b"".join(struct.pack(">HHII", 0x9000 + i % 100, 7, 4, 0) for i in range(count))
    exif = b"MM\x00*\x00\x00\x00\x08" + struct.pack(">H", count) + entries + b"\x00\x00\x00\x00"
    return encoded(smooth(64, 64), "PNG", exif=exif)


def png_with_zlib_bomb_profile() -> bytes:
    """An iCCP chunk that inflates to 1 GB."""
    iccp = chunk(b"iCCP", b"icc\x00\x00" + zero_rows(1 << 20, 1024, level=9))
    image = encoded(smooth(64, 64), "PNG")
    return image[:33] + iccp + image[33:]


def psd_claiming(side: int = 30_000) -> bytes:
    """A Photoshop header: version 1, 3 channels of 8 bits, RGB, side x side."""
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, side, side, 8, 3) + bytes(64)


def with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """A HEIF or AVIF file whose every 'ispe' box (an item's size, what a decoder reads before any pixel) says
    ``width`` x ``height``; the coded picture is left as it was."""
    out, pos = bytearray(data), 0
    while (pos := out.find(b"ispe", pos)) != -1:
        out[pos + 8 : pos + 16] = struct.pack(">II", width, height)  # after the box type: version/flags, then w, h
        pos += 4
    return bytes(out)


def heic_claiming(side: int = 60_000) -> bytes:
    """A small HEIC (pillow-heif's x265) whose header says side x side."""
    return with_declared_size(encoded(smooth(64, 64), "HEIF", quality=50), side, side)


def avif_claiming(side: int = 60_000) -> bytes:
    """A small AVIF (Pillow's libavif with aom) whose header says side x side."""
    return with_declared_size(encoded(smooth(64, 64), "AVIF", quality=50), side, side)
