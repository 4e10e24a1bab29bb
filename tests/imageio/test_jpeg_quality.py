"""The JPEG quality estimate, against files Pillow (libjpeg) writes."""

import io

import numpy as np
import pytest
from PIL import Image

from service.imageio import decoding
from service.imageio.jpeg_quality import estimate_quality, ijg_tables
from tests.conftest import encode_image, smooth_image

LIMITS = decoding.Limits(max_input_pixels=1 << 20, max_output_pixels=1 << 22)


def jpeg(quality: int, subsampling: str = "4:2:0", mode: str = "RGB", **params) -> bytes:
    im = Image.fromarray(smooth_image(40, 48)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, subsampling=subsampling, **params)
    return buf.getvalue()


def tables(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as im:
        return im.quantization


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
def test_every_quality_pillow_writes_is_read_back_exactly(subsampling):
    for q in range(10, 101):
        estimate = estimate_quality(tables(jpeg(q, subsampling)))
        assert (estimate.quality, estimate.exact) == (q, True), q


def test_a_grayscale_jpeg_is_read_from_its_one_table():
    assert estimate_quality(tables(jpeg(37, mode="L"))).quality == 37


def test_tables_of_another_encoder_give_the_nearest_libjpeg_quality_not_an_exact_one():
    luma, chroma = ijg_tables(60)
    coarser = {0: [min(255, round(v * 1.25)) for v in luma], 1: list(chroma)}  # 25% coarser than q60's
    estimate = estimate_quality(coarser)
    assert not estimate.exact and 45 <= estimate.quality < 60


def test_no_luminance_table_gives_no_estimate():
    assert estimate_quality({}) is None and estimate_quality({0: [0] * 64}) is None


def test_decoding_a_jpeg_carries_its_quality_and_a_png_none():
    assert decoding.decode(jpeg(50), LIMITS).compression.quality == 50
    assert decoding.decode(encode_image(Image.fromarray(smooth_image(40, 48))), LIMITS).compression is None


def test_a_progressive_jpeg_is_estimated_like_a_baseline_one():
    assert decoding.decode(jpeg(75, progressive=True), LIMITS).compression.quality == 75


def test_the_standard_tables_are_quality_50():
    luma, chroma = ijg_tables(50)
    assert luma[:8].tolist() == [16, 11, 10, 16, 24, 40, 51, 61] and chroma[:4].tolist() == [17, 18, 24, 47]
    assert np.all(ijg_tables(100)[0] == 1)
