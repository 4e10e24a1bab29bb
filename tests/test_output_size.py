"""The size a request asks for: which model scale runs and what the result is resampled to (service.output_size)."""

import pytest

from service.errors import BadParameter
from service.output_size import SizeRequest

SCALES = (2, 3, 4)


def plan(w: int, h: int, scales: tuple[int, ...] = SCALES, **asked):
    return SizeRequest(**asked).plan(w, h, scales)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_a_models_own_scale_runs_that_model_and_needs_no_resampling(scale):
    p = plan(120, 80, scale=scale)
    assert (p.model_scale, p.width, p.height) == (scale, 120 * scale, 80 * scale)
    assert not p.needs_resampling(120, 80)


def test_no_size_asked_is_x2():
    p = plan(120, 80)
    assert (p.model_scale, p.width, p.height) == (2, 240, 160)
    assert SizeRequest().integer_scale == 2


@pytest.mark.parametrize(("scale", "model_scale"), [(1.5, 2), (2.0001, 3), (2.5, 3), (3.9, 4), (4.0, 4)])
def test_a_fractional_scale_runs_the_smallest_model_scale_that_reaches_it(scale, model_scale):
    p = plan(1200, 800, scale=scale)
    assert p.model_scale == model_scale
    assert (p.width, p.height) == (round(1200 * scale), round(800 * scale))
    assert p.needs_resampling(1200, 800) == (scale != model_scale)


def test_width_alone_keeps_the_aspect_ratio():
    p = plan(1200, 800, width=1920)
    assert (p.model_scale, p.width, p.height) == (2, 1920, 1280)


def test_height_alone_keeps_the_aspect_ratio():
    p = plan(1200, 800, height=3000)
    assert (p.model_scale, p.width, p.height) == (4, 4500, 3000)


def test_contain_fits_both_sides_and_keeps_the_aspect_ratio():
    p = plan(1200, 800, width=2000, height=2000, fit="contain")
    assert (p.model_scale, p.width, p.height) == (2, 2000, 1333)
    assert p.box == (0, 0, 2400, 1600)


def test_cover_fills_both_sides_and_crops_the_overflow_evenly():
    p = plan(1200, 800, width=2000, height=2000, fit="cover")
    assert (p.model_scale, p.width, p.height) == (3, 2000, 2000)
    left, top, right, bottom = p.box  # in the x3 output (3600 x 2400): a centred 2400 x 2400 square
    assert (left, top, right, bottom) == pytest.approx((600, 0, 3000, 2400))


def test_fill_stretches_to_both_sides_with_the_scale_the_larger_needs():
    p = plan(1200, 800, width=1800, height=2400, fit="fill")
    assert (p.model_scale, p.width, p.height) == (3, 1800, 2400)
    assert p.box == (0, 0, 3600, 2400)


def test_only_the_model_scales_served_are_used():
    assert plan(100, 100, (2, 4), scale=2.5).model_scale == 4


@pytest.mark.parametrize(
    "asked",
    [{"width": 1200}, {"width": 1000}, {"width": 1000, "height": 5000, "fit": "contain"}, {"height": 700}],
    ids=["same width", "smaller", "contain smaller on one side", "smaller height"],
)
def test_a_size_not_larger_than_the_image_is_refused(asked):
    with pytest.raises(BadParameter, match="only upscales"):
        plan(1200, 800, **asked)


@pytest.mark.parametrize("asked", [{"width": 4801}, {"height": 3201}, {"width": 100, "height": 3300, "fit": "fill"}])
def test_a_size_past_the_largest_model_scale_is_refused(asked):
    with pytest.raises(BadParameter, match="the most this server makes is x4"):
        plan(1200, 800, **asked)


@pytest.mark.parametrize(
    "asked",
    [{"scale": 1.5, "width": 100}, {"scale": 1.0}, {"scale": 4.5}, {"fit": "stretch"}],
    ids=["scale and width", "scale 1", "scale 4.5", "unknown fit"],
)
def test_requests_that_cannot_be_planned_are_refused_before_any_image(asked):
    with pytest.raises(BadParameter):
        SizeRequest(**asked)


@pytest.mark.parametrize(
    ("asked", "scale"), [({"scale": 3.0}, 3), ({"scale": 1.5}, None), ({"width": 100}, None), ({}, 2)]
)
def test_the_model_scale_is_known_before_the_image_only_for_the_models_own_scales(asked, scale):
    assert SizeRequest(**asked).integer_scale == scale
