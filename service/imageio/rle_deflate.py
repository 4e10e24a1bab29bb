"""zlib streams from ``csrc/rle_deflate.c``: deflate with literals and runs only, for PNG's filtered rows.

On rows of upscaled photos it writes files within a few percent of ISA-L's level 1, and faster
(``bench/results/codecs.json``), so ``service.imageio.png_writer`` uses it for level 1, the default. Graphics
(flat areas with sharp, repeated shapes and text) repeat more than runs can say: a part that comes out below
``ISAL_RECHECK_BITS_PER_BYTE`` is compressed again with ISA-L, which is fast on such data, and the smaller of the
two is kept. The library is compiled with the package (setup.py); where it was not, :func:`unavailable` says why
and ``service.imageio.png_writer`` keeps ISA-L for everything.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

import numpy as np
from isal import isal_zlib

from service.compiled import Library, load_library

__all__ = ["RunLengthDeflate", "unavailable"]

_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, 'fastest' (RFC 1950)
# Below this, a part is likely drawn graphics, whose longer repeats ISA-L's matches find and runs alone miss
# (``run_length_alone_bytes`` in bench/results/codecs.json); upscaled photos come out well above it.
ISAL_RECHECK_BITS_PER_BYTE = 1.5


@cache
def _library() -> tuple[Library | None, str | None]:
    return load_library(Path(__file__).parent, "rle_deflate")


def unavailable() -> str | None:
    """Why the encoder cannot run in this process, or None when it can."""
    return _library()[1]


class RunLengthDeflate:
    """One zlib stream, written part by part, as ``zlib.compressobj``: ``compress`` returns whole deflate blocks
    (each part ends byte-aligned with an empty stored block, as a sync flush), ``flush`` the end of the stream."""

    def __init__(self):
        lib, why_not = _library()
        if lib is None:
            raise RuntimeError(f"the run-length deflater cannot run: {why_not}")
        self._lib = lib
        self._adler = 1
        self._pending = _ZLIB_HEADER  # written before the first part

    def compress(self, data: np.ndarray | bytes) -> bytes:
        data = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
        if data.size == 0:  # as zlib: nothing yet (the header waits for the next part)
            return b""
        return self._part(data, final=False)

    def flush(self) -> bytes:
        return self._part(np.empty(0, np.uint8), final=True) + struct.pack(">I", self._adler)

    def _part(self, data: np.ndarray, final: bool) -> bytes:
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        head, self._pending = self._pending, b""
        out = np.empty(len(head) + self._lib.lib.rle_deflate_bound(data.size), np.uint8)
        out[: len(head)] = np.frombuffer(head, np.uint8)
        written = self._lib.lib.rle_deflate(
            self._lib.address(data), data.size, final, self._lib.address(out[len(head) :])
        )
        if written < 0:
            raise MemoryError("rle_deflate could not allocate its run tables")
        self._adler = isal_zlib.adler32(data, self._adler)
        if not final and written * 8 < ISAL_RECHECK_BITS_PER_BYTE * data.size:
            again = _isal_part(data)
            if len(again) < written:
                return head + again
        return out[: len(head) + written].tobytes()


def _isal_part(data: np.ndarray) -> bytes:
    """``data`` as raw deflate blocks from ISA-L's level 1, byte-aligned and not final, as rle_deflate's parts end.
    A new compressor for each part: its matches must not reach into parts that it did not see."""
    deflate = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
    return deflate.compress(data) + deflate.flush(isal_zlib.Z_SYNC_FLUSH)
