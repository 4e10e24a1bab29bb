"""Cutting an image into fixed-size overlapping LR tiles and stitching the SR tiles back.

The network maps a (T + 2c)^2 input to a (sT)^2 output using only valid
convolutions, so each output pixel depends on the c-pixel neighbourhood of
its LR pixel and nothing else. A tile whose core is cut with ``c`` pixels of
context from the mirror-padded image therefore yields exactly the pixels the
whole image would. Tiles at the right and bottom edges are shifted inwards so
every tile has the same shape (they overlap their neighbours; overlapping
pixels are identical, so writing them twice is harmless). Images smaller
than one tile are zero-padded beyond their context, which only feeds output
pixels that are thrown away.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["TileGrid", "tile_origins"]


def tile_origins(length: int, tile: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``; the last one is flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one (height x width) LR image for a network with ``context`` and ``scale``."""

    height: int
    width: int
    tile: int  # core size T of every tile, in LR pixels
    context: int  # pixels of context the network needs on each side
    scale: int

    @cached_property
    def origins(self) -> list[tuple[int, int]]:
        ys, xs = tile_origins(self.height, self.tile), tile_origins(self.width, self.tile)
        return [(y, x) for y in ys for x in xs]

    def __len__(self) -> int:
        return len(self.origins)

    @property
    def input_size(self) -> int:
        """Side of every network input tile: T + 2c."""
        return self.tile + 2 * self.context

    def pad(self, img: np.ndarray) -> np.ndarray:
        """Mirror-pad an (H, W, C) image by ``context``, then zero-pad it up to one full tile if smaller."""
        c = self.context
        padded = np.pad(img, ((c, c), (c, c), (0, 0)), mode="symmetric")
        extra_h = max(0, self.input_size - padded.shape[0])
        extra_w = max(0, self.input_size - padded.shape[1])
        if extra_h or extra_w:
            padded = np.pad(padded, ((0, extra_h), (0, extra_w), (0, 0)))
        return padded

    def cut(self, padded: np.ndarray, index: int) -> np.ndarray:
        """The (T + 2c, T + 2c, C) input of tile ``index`` from the output of :meth:`pad` (a view)."""
        y, x = self.origins[index]
        n = self.input_size
        return padded[y : y + n, x : x + n]

    def place(self, out: np.ndarray, index: int, sr_tile: np.ndarray) -> None:
        """Write tile ``index``'s (sT, sT, C) result into the (sH, sW, C) output ``out``."""
        y, x = self.origins[index]
        s, t = self.scale, self.tile
        h, w = min(t, self.height - y), min(t, self.width - x)
        out[y * s : (y + h) * s, x * s : (x + w) * s] = sr_tile[: h * s, : w * s]
