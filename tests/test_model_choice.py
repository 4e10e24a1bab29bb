"""model=auto: which model runs an input, from the models' JPEG and WebP bands and the input's estimated quality."""

from pathlib import Path

import pytest

from service.errors import BadParameter
from service.imageio.jpeg_quality import JpegQuality
from service.imageio.webp_quality import WebpQuality
from service.model_choice import bands, check_requested, choose_model
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
        spec("jpeg-low", 2, [1, 40]),
        spec("jpeg-mid", 2, [41, 65]),
        spec("jpeg-high", 2, [66, 92], webp=[60, 85]),
        spec("webp-mid", 2, webp=[20, 59]),
        spec("fast", 3),
    ]
}


def choose(quality: int | None, exact: bool = True, scale: int = 2, requested: str = "auto"):
    jpeg = None if quality is None else JpegQuality(quality, exact)
    return choose_model(SPECS, requested, scale, "fast", jpeg)


@pytest.mark.parametrize(
    ("quality", "expected"),
    [(10, "jpeg-low"), (40, "jpeg-low"), (41, "jpeg-mid"), (65, "jpeg-mid"), (75, "jpeg-high"), (92, "jpeg-high")],
)
def test_a_jpeg_runs_the_model_of_its_band(quality, expected):
    assert choose(quality).key == ModelKey(expected, 2)


def test_a_jpeg_above_every_band_and_a_lossless_input_run_the_clean_model():
    assert choose(97).key == ModelKey("fast", 2)
    assert choose(None).key == ModelKey("fast", 2) and choose(None).reason == "auto: not a lossy JPEG or WebP"


def webp(quality: int, scale: int = 2):
    return choose_model(SPECS, "auto", scale, "fast", WebpQuality(quality=quality, quantizer=40.5))


@pytest.mark.parametrize(("quality", "expected"), [(20, "webp-mid"), (59, "webp-mid"), (60, "jpeg-high")])
def test_a_webp_runs_the_model_of_its_webp_band_not_of_a_jpeg_band(quality, expected):
    assert webp(quality).key == ModelKey(expected, 2)


def test_a_webp_in_no_band_runs_the_clean_model_and_says_what_was_read():
    choice = webp(95)
    assert choice.key == ModelKey("fast", 2) and choice.reason == "auto: WebP quality 95 (quantiser 40.5), in no band"
    assert webp(10).key == ModelKey("fast", 2)  # below every WebP band, though inside a JPEG band


def test_a_scale_without_jpeg_models_runs_the_clean_model_for_jpegs_too():
    assert choose(30, scale=3).key == ModelKey("fast", 3)


def test_an_estimate_from_foreign_tables_says_so():
    assert "nearest quality" in choose(50, exact=False).reason


def test_a_named_model_is_honoured_whatever_the_input():
    assert choose(30, requested="turbo").key == ModelKey("turbo", 2)


def test_bands_are_listed_lowest_first_per_scale():
    assert [b[:2] for b in bands(SPECS, 2, "jpeg_quality")] == [(1, 40), (41, 65), (66, 92)]
    assert [b[:2] for b in bands(SPECS, 2, "webp_quality")] == [(20, 59), (60, 85)]
    assert bands(SPECS, 4, "jpeg_quality") == []


def test_unknown_models_are_refused_before_the_body_is_read():
    check_requested(SPECS, "auto", 2, "fast")
    with pytest.raises(BadParameter, match="no model 'quality'"):
        check_requested(SPECS, "quality", 2, "fast")
    with pytest.raises(BadParameter, match="auto needs the clean model 'fast' for scale 4"):
        check_requested(SPECS, "auto", 4, "fast")
