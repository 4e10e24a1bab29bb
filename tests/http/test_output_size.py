"""Sizes as people ask for them, through the real server: a fractional scale, a width or a height, both with each
fit; the result is the model's output resampled to the exact size, and the answer says what ran."""

import io

import numpy as np
import pytest
from PIL import Image

from service.imageio.resampling import FILTER
from tests.conftest import decode_image, encode_image, smooth_image, start_server, stop_server
from tests.http.test_errors import assert_error, png_header_only

PICTURE = Image.fromarray(smooth_image(48, 64))  # 64 x 48


def upscale(client, data: bytes, **params):
    response = client.post("/v1/upscale", content=data, params=params)
    assert response.status_code == 200, response.text
    return response, decode_image(response.content)


@pytest.fixture(scope="module")
def png() -> bytes:
    return encode_image(PICTURE)


@pytest.fixture(scope="module")
def at_model_scale(client, png) -> dict[int, Image.Image]:
    """What each model scale makes of the picture, as the server answers it."""
    return {s: upscale(client, png, scale=s)[1] for s in (2, 3, 4)}


@pytest.mark.parametrize(
    ("params", "size", "model_scale"),
    [
        ({"scale": 1.5}, (96, 72), 2),
        ({"scale": 2.5}, (160, 120), 3),
        ({"width": 100}, (100, 75), 2),
        ({"height": 150}, (200, 150), 4),
        ({"width": 200, "height": 120, "fit": "contain"}, (160, 120), 3),
        ({"width": 200, "height": 120}, (160, 120), 3),
        ({"width": 200, "height": 120, "fit": "cover"}, (200, 120), 4),
        ({"width": 100, "height": 120, "fit": "fill"}, (100, 120), 3),
    ],
)
def test_the_result_has_the_size_asked_for_and_says_which_model_scale_ran(client, png, params, size, model_scale):
    response, im = upscale(client, png, **params)
    assert im.size == size
    assert response.headers["x-output-size"] == f"{size[0]}x{size[1]}"
    assert response.headers["x-model-scale"] == str(model_scale)
    assert response.headers["x-model"] == f"fast_x{model_scale}"
    assert f'filename="image_{size[0]}x{size[1]}.png"' in response.headers["content-disposition"]


def test_a_models_own_scale_keeps_the_file_name_of_the_scale(client, png):
    response, im = upscale(client, png, scale=3.0)
    assert im.size == (192, 144) and 'filename="image_x3.png"' in response.headers["content-disposition"]


@pytest.mark.parametrize(
    ("params", "model_scale", "box"),
    [
        ({"scale": 1.5}, 2, None),
        ({"width": 200, "height": 120, "fit": "contain"}, 3, None),
        ({"width": 200, "height": 120, "fit": "cover"}, 4, (0, 19.2, 256, 172.8)),  # 256 x 192 cut to 5:3
        ({"width": 100, "height": 120, "fit": "fill"}, 3, None),
    ],
)
def test_the_result_is_the_models_output_resampled(client, png, at_model_scale, params, model_scale, box):
    _, im = upscale(client, png, **params)
    expected = at_model_scale[model_scale].resize(im.size, FILTER, box=box)
    assert np.array_equal(np.asarray(im), np.asarray(expected))


def test_alpha_is_kept_and_resampled_to_the_same_size(client):
    rgba = Image.fromarray(
        np.dstack([smooth_image(48, 64), np.linspace(0, 255, 64 * 48).reshape(48, 64)]).astype(np.uint8)
    )
    _, im = upscale(client, encode_image(rgba), width=100)
    assert im.mode == "RGBA" and im.size == (100, 75)
    alpha = np.asarray(im.getchannel("A"), dtype=float)
    assert alpha[0].mean() < 40 and alpha[-1].mean() > 215  # the ramp, top to bottom


def test_sixteen_bit_stays_sixteen_bit_at_a_fractional_scale(client):
    pixels = (smooth_image(48, 64).astype(np.uint16) * 257).astype(">u2")
    buf = io.BytesIO()
    import png as pypng  # writes 16-bit RGB, which Pillow cannot

    pypng.Writer(64, 48, greyscale=False, bitdepth=16).write(buf, pixels.reshape(48, -1).astype(int).tolist())
    response = client.post("/v1/upscale", content=buf.getvalue(), params={"scale": 1.5})
    assert response.status_code == 200, response.text
    width, height, rows, info = pypng.Reader(bytes=response.content).read()
    assert (width, height, info["bitdepth"]) == (96, 72, 16)


def test_the_upright_picture_is_what_the_size_is_of(client):
    """An EXIF-rotated photo (orientation 6: stored 64 x 48, seen 48 x 64): width is the width people see."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode_image(PICTURE, "JPEG", quality=95, exif=exif.tobytes())
    _, im = upscale(client, data, width=72)
    assert im.size == (72, 96)


@pytest.mark.parametrize(
    "params",
    [{"scale": 1}, {"scale": 4.5}, {"width": 0}, {"height": -3}, {"fit": "stretch"}, {"width": 70000}],
)
def test_out_of_range_sizes_are_a_422(client, png, params):
    assert_error(client.post("/v1/upscale", content=png, params=params), 422, "validation_error")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"scale": 1.5, "width": 100}, "not both"),
        ({"width": 64}, "only upscales"),
        ({"width": 50, "height": 50}, "only upscales"),
        ({"width": 300}, "most this server makes is x4"),
    ],
)
def test_sizes_that_cannot_be_made_are_a_clear_400(client, png, params, message):
    body = assert_error(client.post("/v1/upscale", content=png, params=params), 400, "bad_parameter")
    assert message in body["message"]


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("tight"), tile=32, max_input_pixels=1_100_000, max_output_pixels=5_000_000
    )
    yield srv
    stop_server(srv)


def test_the_model_scales_output_is_held_to_the_pixel_limit_before_decoding(tight):
    """x2.2 of 1000 x 1000 is 4.84 MP, within 5 MP, but the x3 model would make 9 MP: refused from the header."""
    import httpx

    r = httpx.post(f"{tight.url}/v1/upscale", content=png_header_only(1000, 1000), params={"scale": 2.2})
    assert "x3 of 1000x1000" in assert_error(r, 413, "too_large")["message"]


def test_the_final_size_is_held_to_the_output_formats_limit(client):
    strip = encode_image(Image.fromarray(smooth_image(4, 5000)))
    body = assert_error(
        client.post("/v1/upscale", content=strip, params={"width": 16384, "format": "webp"}), 413, "too_large"
    )
    assert "WEBP holds at most 16383" in body["message"]
