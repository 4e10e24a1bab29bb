"""The service's PNG encoder writes files Pillow reads back bit for bit."""

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from service.imageio.png_writer import encode_png


def read(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("level", range(10))
def test_every_compression_level_round_trips_exactly(rng, level):
    """Levels 0-3 deflate with ISA-L, 4-9 with zlib; both must be plain zlib streams any PNG reader takes."""
    color = rng.integers(0, 256, (300, 700, 3), dtype=np.uint8)  # more than one 1 MiB block of rows
    np.testing.assert_array_equal(np.asarray(read(encode_png(color, level=level))), color)


def test_level_zero_stores_rather_than_compresses(rng):
    noise = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    assert len(encode_png(noise, level=0)) < noise.nbytes * 1.01 + 1000  # stored blocks: raw size plus framing


@pytest.mark.parametrize(
    "channels,alpha,mode", [(3, False, "RGB"), (3, True, "RGBA"), (1, False, "L"), (1, True, "LA")]
)
def test_eight_bit_images_round_trip_exactly(rng, channels, alpha, mode):
    color = rng.integers(0, 256, (37, 51, channels), dtype=np.uint8)
    a = rng.integers(0, 256, (37, 51), dtype=np.uint8) if alpha else None
    im = read(encode_png(color, a))
    expected = np.dstack([color, a]) if alpha else color
    assert im.mode == mode
    np.testing.assert_array_equal(np.asarray(im).reshape(expected.shape), expected)


def test_sixteen_bit_grey_round_trips_exactly(rng):
    grey = rng.integers(0, 65536, (20, 9, 1), dtype=np.int64).astype(np.uint16)
    im = read(encode_png(grey))
    assert im.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(im), grey[:, :, 0])


def test_many_blocks_stay_aligned(rng):
    tall = rng.integers(0, 256, (3000, 200, 3), dtype=np.uint8)  # more rows than one block
    np.testing.assert_array_equal(np.asarray(read(encode_png(tall))), tall)


def test_icc_profile_and_exif_are_written():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Upscaler test camera"
    im = read(encode_png(np.zeros((4, 4, 3), np.uint8), icc_profile=icc, exif=exif.tobytes()))
    assert im.info["icc_profile"] == icc
    assert im.getexif()[0x010F] == "Upscaler test camera"


def test_smooth_images_compress(rng):
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (256, 256, 3))
    assert len(encode_png(np.ascontiguousarray(ramp))) < ramp.nbytes / 20


def test_rejects_unsupported_arrays():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), np.float32))
