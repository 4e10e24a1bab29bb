"""How compressed a lossy WebP is, read from its VP8 frame header.

A lossy WebP is one VP8 key frame (RFC 6386). Its first partition starts with a header, coded with the boolean
entropy coder of section 7, that gives the quantiser indices (0 finest .. 127 coarsest): a base luma AC index, and
where segmentation is on (libwebp splits every picture into four segments by how busy each macroblock is), one
index per segment, absolute or as a delta from the base, with the probabilities the macroblock map is coded with.
:func:`read_quality` decodes only that header, a few dozen bytes, and returns the segments' indices weighted by the
share of macroblocks their probabilities give each: how coarse the file's luma quantiser is on average.

It also gives that index as the quality libwebp would have been asked for: libwebp turns a quality q (0..100) into a
compression c = (2/3 * q/100 below q = 75, else 2 * q/100 - 1) ** (1/3) and the index into 127 * (1 - c), before it
spreads the segments around it. Inverting that is exact for libwebp's files (within a point or two: segments move a
little with the picture) and gives other encoders' files the quality libwebp would need to lose as much.
A lossless WebP (VP8L) has no quantiser and gives None; so does anything this reader does not understand.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["WebpQuality", "read_quality", "quality_of_index"]

_MAX_CHUNKS = 64  # chunks before the image data: a still WebP has at most VP8X, ICCP, ALPH and VP8
_HEADER_BYTES = 64  # the frame header up to the quantisers is at most about 40 bytes of the first partition


@dataclass(frozen=True)
class WebpQuality:
    quality: int  # the libwebp quality (0..100) whose quantiser is as coarse as the file's, on average
    quantizer: float  # the file's luma AC quantiser index (0..127), segments weighted by their share

    band: ClassVar[str] = "webp_quality"  # the model card's field with the qualities a model is made for

    def describe(self) -> str:
        return f"WebP quality {self.quality} (quantiser {self.quantizer:g})"


def quality_of_index(index: float) -> int:
    """The libwebp quality whose base luma quantiser index is ``index`` (see the module docstring)."""
    linear = max(0.0, 1.0 - index / 127.0) ** 3
    quality = linear * 1.5 if linear < 0.5 else (linear + 1.0) / 2.0
    return max(0, min(100, round(quality * 100)))


def read_quality(data: bytes) -> WebpQuality | None:
    """The quantiser of a lossy WebP file's frame header; None for lossless, animated or unreadable files."""
    frame = _vp8_chunk(memoryview(data))  # a view: nothing of the file is copied but the header's bytes
    if frame is None or len(frame) < 10 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":
        return None  # not a key frame: no still WebP holds one
    first_partition = frame[10 : 10 + min(_HEADER_BYTES, int.from_bytes(frame[0:3], "little") >> 5)]
    try:
        index = _mean_quantizer(_BoolDecoder(first_partition))
    except IndexError:  # the header ran past the partition: truncated
        return None
    return WebpQuality(quality=quality_of_index(index), quantizer=round(index, 2))


def _vp8_chunk(data: memoryview) -> memoryview | None:
    """The payload of the RIFF file's VP8 chunk (lossy image data), if it has one before any animation frame."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    pos = 12
    for _ in range(_MAX_CHUNKS):
        if pos + 8 > len(data):
            return None
        fourcc, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if fourcc == b"VP8 ":
            return data[pos + 8 : pos + 8 + size]
        if fourcc in (b"VP8L", b"ANMF"):
            return None
        pos += 8 + size + (size & 1)
    return None


class _BoolDecoder:
    """The boolean entropy decoder of RFC 6386, section 7.3, enough for the frame header."""

    def __init__(self, data: memoryview):
        self.data, self.pos = data, 2
        self.value = (data[0] << 8) | data[1]
        self.range, self.bit_count = 255, 0

    def bool(self, prob: int) -> int:
        split = 1 + (((self.range - 1) * prob) >> 8)
        big_split = split << 8
        if self.value >= big_split:
            bit, self.range, self.value = 1, self.range - split, self.value - big_split
        else:
            bit, self.range = 0, split
        while self.range < 128:
            self.value, self.range = self.value << 1, self.range << 1
            self.bit_count += 1
            if self.bit_count == 8:
                self.bit_count = 0
                self.value |= self.data[self.pos] if self.pos < len(self.data) else 0
                self.pos += 1
        return bit

    def literal(self, bits: int) -> int:
        value = 0
        for _ in range(bits):
            value = (value << 1) | self.bool(128)
        return value

    def signed(self, bits: int) -> int:
        value = self.literal(bits)
        return -value if self.bool(128) else value

    def optional_signed(self, bits: int) -> int:
        return self.signed(bits) if self.bool(128) else 0


def _mean_quantizer(bd: _BoolDecoder) -> float:
    """Read the key frame header (RFC 6386, section 9.2 to 9.6) up to the quantiser indices."""
    bd.literal(2)  # colour space, clamping type
    segment_q, absolute, probs = [0, 0, 0, 0], False, [255, 255, 255]
    if segmentation := bd.bool(128):
        update_map, update_data = bd.bool(128), bd.bool(128)
        if update_data:
            absolute = bool(bd.bool(128))
            segment_q = [bd.optional_signed(7) for _ in range(4)]
            for _ in range(4):
                bd.optional_signed(6)  # loop filter level per segment
        if update_map:
            probs = [bd.literal(8) if bd.bool(128) else 255 for _ in range(3)]
    bd.literal(1 + 6 + 3)  # filter type, loop filter level, sharpness
    if bd.bool(128) and bd.bool(128):  # loop filter deltas enabled and updated
        for _ in range(8):
            bd.optional_signed(6)
    bd.literal(2)  # log2 of the DCT partitions
    base = bd.literal(7)  # the luma AC index; the other five are deltas that libwebp leaves at 0 or small
    if not segmentation:
        return float(base)
    # The segment map's tree: probs[0] splits {0, 1} from {2, 3}, probs[1] 0 from 1, probs[2] 2 from 3.
    p0, p1, p2 = (p / 256 for p in probs)
    shares = (p0 * p1, p0 * (1 - p1), (1 - p0) * p2, (1 - p0) * (1 - p2))
    indices = [min(127, max(0, q if absolute else base + q)) for q in segment_q]
    return sum(s * q for s, q in zip(shares, indices, strict=True)) / sum(shares)
