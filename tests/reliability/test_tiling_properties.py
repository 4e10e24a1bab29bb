"""Property tests of the tiling arithmetic (service/runtime/tiling.py) for any image size, tile size and context.

The "network" here is exact integer arithmetic in numpy with the real network's shape contract: a
(T + 2c)^2 input gives a (sT)^2 output using only valid windows, so each output pixel depends on the c-pixel
neighbourhood of its LR pixel. Its weights differ at every offset, so a tile cut one pixel off, a wrong
context or a misplaced result changes the answer. Tiled and stitched, it must equal the whole-image result
bit for bit.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.runtime.tiling import TileGrid, tile_origins

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def window_network(x: np.ndarray, context: int, scale: int) -> np.ndarray:
    """(h + 2c, w + 2c, C) int64 -> (s*h, s*w, C): a valid (2c+1)^2 correlation, then nearest-neighbour upscale."""
    k = 2 * context + 1
    h, w = x.shape[0] - 2 * context, x.shape[1] - 2 * context
    out = np.zeros((h, w, x.shape[2]), np.int64)
    for dy in range(k):
        for dx in range(k):
            out += (1 + dy * k + dx) * x[dy : dy + h, dx : dx + w]
    return out.repeat(scale, axis=0).repeat(scale, axis=1)


def tiled(img: np.ndarray, grid: TileGrid) -> np.ndarray:
    padded = grid.pad(img)
    out = np.full((img.shape[0] * grid.scale, img.shape[1] * grid.scale, img.shape[2]), -1, np.int64)
    for i in range(len(grid)):
        tile_in = grid.cut(padded, i)
        assert tile_in.shape[:2] == (grid.input_size, grid.input_size)
        grid.place(out, i, window_network(tile_in, grid.context, grid.scale))
    return out


def whole(img: np.ndarray, context: int, scale: int) -> np.ndarray:
    padded = np.pad(img, ((context, context), (context, context), (0, 0)), mode="symmetric")
    return window_network(padded, context, scale)


grids = st.builds(
    dict,
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    tile=st.integers(1, 40),
    context=st.integers(0, 5),
    scale=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)


@SETTINGS
@given(g=grids)
def test_tiled_window_network_equals_the_whole_image(g):
    rng = np.random.default_rng(g.pop("seed"))
    img = rng.integers(0, 256, (g["height"], g["width"], 2)).astype(np.int64)
    grid = TileGrid(**g)
    got = tiled(img, grid)
    assert got.min() >= 0, "some output pixels were never written"
    np.testing.assert_array_equal(got, whole(img, grid.context, grid.scale))


@SETTINGS
@given(length=st.integers(1, 5000), tile=st.integers(1, 600))
def test_tile_origins_cover_exactly_with_full_tiles(length, tile):
    starts = tile_origins(length, tile)
    assert starts[0] == 0
    assert all(b > a for a, b in zip(starts, starts[1:], strict=False)), "strictly increasing"
    assert all(b - a <= tile for a, b in zip(starts, starts[1:], strict=False)), "no gap between tiles"
    assert starts[-1] + tile >= length, "the last tile reaches the end"
    assert all(s + tile <= max(length, tile) for s in starts), "no tile sticks out of the image"
    assert len(starts) == -(-length // tile), "the fewest tiles that cover it"
    overlaps = [a + tile - b for a, b in zip(starts, starts[1:], strict=False)]
    assert all(o == 0 for o in overlaps[:-1]), "only the last tile overlaps (it is shifted inwards)"


@SETTINGS
@given(g=grids)
def test_grid_covers_every_pixel_and_every_tile_has_the_network_shape(g):
    g.pop("seed")
    grid = TileGrid(**g)
    s, t = grid.scale, grid.tile
    assert len(grid) == len(tile_origins(grid.height, t)) * len(tile_origins(grid.width, t))
    # LR coverage: every pixel is in 1 to 4 tile cores (overlaps only where an edge tile was shifted inwards).
    covered = np.zeros((grid.height, grid.width), np.int64)
    for y, x in grid.origins:
        covered[y : y + t, x : x + t] += 1
    assert 1 <= covered.min() and covered.max() <= 4
    # Every tile's network input has the one fixed shape, also for images smaller than a tile.
    padded = grid.pad(np.zeros((grid.height, grid.width, 1), np.uint8))
    assert all(grid.cut(padded, i).shape == (grid.input_size, grid.input_size, 1) for i in range(len(grid)))
    # place() writes every output pixel, and only inside the output.
    out = np.full((grid.height * s, grid.width * s, 1), -1, np.int64)
    for i in range(len(grid)):
        grid.place(out, i, np.full((s * t, s * t, 1), i, np.int64))
    assert out.min() >= 0
