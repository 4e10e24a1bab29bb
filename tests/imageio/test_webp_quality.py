"""The WebP quality read from the VP8 frame header, against files Pillow (libwebp) writes."""

import io

import numpy as np
import pytest
from PIL import Image

from service.imageio import decoding
from service.imageio.webp_quality import quality_of_index, read_quality
from tests.conftest import smooth_image

LIMITS = decoding.Limits(max_input_pixels=1 << 20, max_output_pixels=1 << 22)


def picture(h: int = 96, w: int = 128, channels: int = 3) -> np.ndarray:
    """Smooth shapes with some texture, so that libwebp's segments differ as they do on photos."""
    noise = np.random.default_rng(1).normal(0, 12, (h, w, channels))
    return np.clip(smooth_image(h, w, channels).astype(np.float64) + noise, 0, 255).astype(np.uint8)


def webp(quality: int, pixels: np.ndarray | None = None, **params) -> bytes:
    pixels = picture() if pixels is None else pixels
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="WEBP", quality=quality, **params)
    return buf.getvalue()


@pytest.mark.parametrize("quality", [5, 20, 35, 50, 65, 75, 85, 95])
def test_the_quality_libwebp_was_asked_for_is_read_back_within_three(quality):
    read = read_quality(webp(quality))
    assert abs(read.quality - quality) <= 3, read


def test_a_coarser_file_reads_as_a_lower_quality_and_a_higher_quantiser():
    reads = [read_quality(webp(q)) for q in range(10, 100, 10)]
    assert [r.quality for r in reads] == sorted(r.quality for r in reads)
    assert [r.quantizer for r in reads] == sorted((r.quantizer for r in reads), reverse=True)


def test_the_index_to_quality_map_inverts_libwebps_at_its_ends_and_its_knee():
    assert quality_of_index(0) == 100 and quality_of_index(127) == 0
    assert quality_of_index(127 * (1 - 0.5 ** (1 / 3))) == 75  # libwebp's q = 75: compression 0.5


def test_a_webp_with_alpha_is_read_through_its_extended_header():
    rgba = picture(channels=4)
    rgba[..., 3] = np.linspace(0, 255, rgba.shape[1], dtype=np.uint8)[None, :]
    data = webp(40, rgba)
    assert data[12:16] == b"VP8X" and abs(read_quality(data).quality - 40) <= 3


def test_lossless_animated_truncated_and_foreign_files_give_none():
    assert read_quality(webp(90, lossless=True)) is None
    frames = [Image.fromarray(picture()), Image.fromarray(255 - picture())]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], quality=50)
    assert read_quality(buf.getvalue()) is None
    data = webp(50)
    assert all(read_quality(data[:n]) is None for n in (0, 11, 20, 30, 31))
    assert read_quality(b"\x89PNG\r\n\x1a\n" + data[8:]) is None


def test_corrupt_headers_never_raise():
    data = bytearray(webp(50))
    rng = np.random.default_rng(0)
    for _ in range(300):
        hostile = bytearray(data[:80])
        hostile[rng.integers(12, 80)] = rng.integers(256)
        read = read_quality(bytes(hostile))
        assert read is None or 0 <= read.quality <= 100


def test_decode_reports_a_lossy_webps_quality_and_nothing_for_a_lossless_one():
    assert abs(decoding.decode(webp(30), LIMITS).compression.quality - 30) <= 3
    assert decoding.decode(webp(90, lossless=True), LIMITS).compression is None
