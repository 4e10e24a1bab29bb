"""model=auto: which model runs an input, from the models' JPEG and WebP bands and the input's estimated quality."""

from pathlib import Path

import pytest

from service.errors import BadParameter
from service.imageio.jpeg_quality import JpegQuality
from service.imageio.webp_quality import WebpQuality
from service.model_choice import auto_bands, bands, check_requested, choose_model
from service.model_files import ModelKey, ModelSpec


def spec(name: str, scale: int, band: list[int] | None = None, webp: list[int] | None = None) -> ModelSpec:
    card = {"jpeg_quality": band} if band else {}
    if webp:
        card["webp_quality"] = webp
    return ModelSpec(variant=name, scale=scale, context=7, path=Path(f"{name}_x{scale}.onnx"), card=card)


SPECS = {
    s.key: s
    for s in [
        spec("fast", 2),
        spec("turbo", 2),
        spec("quality", 2),
        spec("fast-jpeg-low", 2, [1, 40]),
        spec("fast-jpeg-mid", 2, [41, 65]),
        spec("fast-jpeg-high", 2, [66, 92], webp=[60, 85]),
        spec("fast-webp-mid", 2, webp=[20, 59]),
        spec("quality-jpeg-mid", 2, [1, 70]),  # measured against quality: its tier's only JPEG model at x2
        spec("fast", 3),
        spec("quality", 3),
        spec("fast-jpeg-mid", 3, [30, 70]),
    ]
}


def choose(quality: int | None, exact: bool = True, scale: int = 2, requested: str = "auto", clean: str = "fast"):
    jpeg = None if quality is None else JpegQuality(quality, exact)
    return choose_model(SPECS, requested, scale, clean, jpeg)


@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (10, "fast-jpeg-low"),
        (40, "fast-jpeg-low"),
        (41, "fast-jpeg-mid"),
        (65, "fast-jpeg-mid"),
        (75, "fast-jpeg-high"),
        (92, "fast-jpeg-high"),
    ],
)
def test_a_jpeg_runs_the_model_of_its_band(quality, expected):
    assert choose(quality).key == ModelKey(expected, 2)


def test_a_jpeg_above_every_band_and_a_lossless_input_run_the_clean_model():
    assert choose(97).key == ModelKey("fast", 2)
    assert choose(None).key == ModelKey("fast", 2) and choose(None).reason == "auto: not a lossy JPEG or WebP"


def webp(quality: int, scale: int = 2, clean: str = "fast"):
    return choose_model(SPECS, "auto", scale, clean, WebpQuality(quality=quality, quantizer=40.5))


@pytest.mark.parametrize(
    ("quality", "expected"), [(20, "fast-webp-mid"), (59, "fast-webp-mid"), (60, "fast-jpeg-high")]
)
def test_a_webp_runs_the_model_of_its_webp_band_not_of_a_jpeg_band(quality, expected):
    assert webp(quality).key == ModelKey(expected, 2)


def test_a_webp_in_no_band_runs_the_clean_model_and_says_what_was_read():
    choice = webp(95)
    assert choice.key == ModelKey("fast", 2) and choice.reason == "auto: WebP quality 95 (quantiser 40.5), in no band"
    assert webp(10).key == ModelKey("fast", 2)  # below every WebP band, though inside a JPEG band


def test_a_scale_without_jpeg_models_runs_the_clean_model_for_jpegs_too():
    assert choose(30, scale=4).key == ModelKey("fast", 4)


def test_an_estimate_from_foreign_tables_says_so():
    assert "nearest quality" in choose(50, exact=False).reason


def test_a_named_model_is_honoured_whatever_the_input():
    assert choose(30, requested="turbo").key == ModelKey("turbo", 2)


def test_a_tier_with_jpeg_models_of_its_own_runs_only_those_and_its_clean_model():
    assert choose(50, clean="quality").key == ModelKey("quality-jpeg-mid", 2)
    assert choose(85, clean="quality").key == ModelKey("quality", 2)  # fast-jpeg-high's band is fast's, not quality's
    assert choose(50).key == ModelKey("fast-jpeg-mid", 2)  # and fast's tier never runs quality's


def test_a_tier_without_models_for_a_codec_or_scale_borrows_fasts():
    assert choose(30, clean="turbo").key == ModelKey("fast-jpeg-low", 2)
    assert choose(50, clean="turbo").key == ModelKey("fast-jpeg-mid", 2)  # not quality's, though its band holds 50
    assert choose(50, clean="quality-v2").key == ModelKey("fast-jpeg-mid", 2)  # a tier is the whole name, not a part
    assert webp(30, clean="quality").key == ModelKey("fast-webp-mid", 2)
    assert choose(50, scale=3, clean="quality").key == ModelKey("fast-jpeg-mid", 3)


def test_auto_bands_list_a_models_band_only_in_the_tier_that_runs_it():
    assert auto_bands(SPECS, "jpeg_quality", "quality").get(ModelKey("quality-jpeg-mid", 2)) == [1, 70]
    assert auto_bands(SPECS, "jpeg_quality", "fast").get(ModelKey("quality-jpeg-mid", 2)) is None
    assert auto_bands(SPECS, "webp_quality", "quality").get(ModelKey("fast-jpeg-high", 2)) == [60, 85]  # borrowed


def test_bands_are_listed_lowest_first_per_scale():
    assert [b[:2] for b in bands(SPECS, 2, "jpeg_quality")] == [(1, 40), (1, 70), (41, 65), (66, 92)]
    assert [b[:2] for b in bands(SPECS, 2, "webp_quality")] == [(20, 59), (60, 85)]
    assert bands(SPECS, 4, "jpeg_quality") == []


def test_unknown_models_are_refused_before_the_body_is_read():
    check_requested(SPECS, "auto", 2, "fast")
    with pytest.raises(BadParameter, match="no model 'sharp'"):
        check_requested(SPECS, "sharp", 2, "fast")
    with pytest.raises(BadParameter, match="auto needs the clean model 'fast' for scale 4"):
        check_requested(SPECS, "auto", 4, "fast")
