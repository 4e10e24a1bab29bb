"""Tiled inference reconstructs whole-image inference exactly."""

import numpy as np
import pytest

from service.runtime.engine import Engine, to_pixels
from service.runtime.tiling import TileGrid, tile_origins
from tests.conftest import MODELS, assert_same_pixels, smooth_image


@pytest.mark.parametrize("length,tile", [(1, 8), (8, 8), (9, 8), (17, 8), (100, 32), (31, 64)])
def test_tile_origins_cover_every_pixel_with_full_tiles(length, tile):
    starts = tile_origins(length, tile)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
        assert s + tile <= max(length, tile)
    assert covered.all()


def test_grid_pads_small_images_up_to_one_tile():
    grid = TileGrid(height=5, width=3, tile=16, context=4, scale=2)
    padded = grid.pad(np.zeros((5, 3, 3), np.uint8))
    assert padded.shape[:2] == (24, 24) and len(grid) == 1


@pytest.fixture(scope="module")
def engines():
    # A tile big enough for the whole test image (one tile) and a small one (many overlapping tiles). On the CPU,
    # on any machine: on a GPU, cuDNN picks other TF32 algorithms for other tile shapes (the GPU is tested in
    # tests/test_gpu.py).
    return (
        Engine(MODELS / "fast_x2.onnx", tile=256, prefer_gpu=False),
        Engine(MODELS / "fast_x2.onnx", tile=24, prefer_gpu=False),
    )


@pytest.mark.parametrize("h,w", [(70, 53), (24, 24), (5, 90)])
def test_tiled_output_equals_whole_image_output(engines, h, w):
    whole, tiled = engines
    img = smooth_image(h, w).astype(np.float32) / 255
    a, b = whole.upscale(("fast", 2), img), tiled.upscale(("fast", 2), img, max_batch=3)
    assert a.shape == b.shape == (2 * h, 2 * w, 3)
    assert np.abs(a - b).max() <= 1e-5
    assert_same_pixels(to_pixels(b, np.uint8), a)
