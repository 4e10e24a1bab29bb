"""model=auto through the real server and the shipped models: a JPEG or lossy WebP runs the model of its quality's
band, anything else the clean model; the answer names the model and why; a named model is still honoured."""

import io

import pytest
from PIL import Image

from service.imageio.webp_quality import read_quality
from tests.conftest import encode_image, serving, smooth_image


def jpeg(quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(smooth_image(48, 40)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def webp(quality: int, **params) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(smooth_image(48, 40)).save(buf, format="WEBP", quality=quality, **params)
    return buf.getvalue()


def served_bands(client, field: str, tier: str = "fast", scale: int = 2) -> dict[tuple[int, int], str]:
    """The bands of a tier's models (``fast``: the one auto stays in unless ``UPSCALER_CLEAN_MODEL`` says)."""
    models = client.get("/v1/models").json()["models"]
    ours = [m for m in models if m["scale"] == scale and m[field] and m["variant"].startswith(f"{tier}-")]
    return {tuple(m[field]): f"{m['variant']}_x{scale}" for m in ours}


@pytest.fixture(scope="module")
def bands(client) -> dict[tuple[int, int], str]:
    found = served_bands(client, "jpeg_quality")
    assert found, "the shipped models have no JPEG bands at x2"
    return found


@pytest.fixture(scope="module")
def webp_bands(client) -> dict[tuple[int, int], str]:
    found = served_bands(client, "webp_quality")
    assert found, "the shipped models have no WebP bands at x2"
    return found


def expected_model(bands: dict[tuple[int, int], str], quality: int, clean: str = "fast_x2") -> str:
    return next((model for (low, high), model in bands.items() if low <= quality <= high), clean)


def upscale(client, data: bytes, **params):
    response = client.post("/v1/upscale", content=data, params={"scale": 2, **params})
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("quality", [15, 30, 50, 65, 75, 90, 98])
def test_a_jpeg_runs_the_model_of_its_band(client, bands, quality):
    response = upscale(client, jpeg(quality))
    assert response.headers["x-model"] == expected_model(bands, quality)
    assert response.headers["x-model-reason"].startswith(f"auto: JPEG quality {quality}")


def test_every_band_is_reached_by_some_quality_and_a_low_quality_does_not_run_the_clean_model(client, bands):
    ran = {upscale(client, jpeg(q)).headers["x-model"] for q in range(10, 100, 5)}
    assert set(bands.values()) <= ran and "fast_x2" != expected_model(bands, 30)


@pytest.mark.parametrize("quality", [10, 30, 50, 75, 95])
def test_a_lossy_webp_runs_the_model_of_the_webp_band_its_header_reads_into(client, webp_bands, quality):
    data = webp(quality)
    read = read_quality(data)
    response = upscale(client, data)
    assert response.headers["x-model"] == expected_model(webp_bands, read.quality)
    assert response.headers["x-model-reason"].startswith(f"auto: WebP quality {read.quality} (quantiser ")


def test_a_strongly_compressed_webp_does_not_run_the_clean_model(client, webp_bands):
    assert upscale(client, webp(50)).headers["x-model"] != "fast_x2"


def test_a_lossless_webp_runs_the_clean_model(client):
    response = upscale(client, webp(90, lossless=True))
    assert response.headers["x-model"] == "fast_x2"
    assert response.headers["x-model-reason"] == "auto: not a lossy JPEG or WebP"


def test_a_png_runs_the_clean_model(client):
    response = upscale(client, encode_image(Image.fromarray(smooth_image(48, 40))))
    assert response.headers["x-model"] == "fast_x2"
    assert response.headers["x-model-reason"] == "auto: not a lossy JPEG or WebP"


def test_a_named_model_is_honoured_for_a_jpeg(client):
    response = upscale(client, jpeg(30), model="fast")
    assert response.headers["x-model"] == "fast_x2" and response.headers["x-model-reason"] == "named in the request"


def test_models_lists_auto_as_the_default_and_each_models_band(client, bands):
    body = client.get("/v1/models").json()
    assert body["default_model"] == "auto" and body["clean_model"] == "fast"
    assert all(high >= low for low, high in bands)
    assert not served_bands(client, "jpeg_quality", "quality"), "another tier's bands are not what auto runs here"


def test_the_quality_tier_is_served_by_name_at_every_scale(client):
    png = encode_image(Image.fromarray(smooth_image(48, 40)))
    for scale in (2, 3, 4):
        response = upscale(client, png, model="quality", scale=scale)
        assert response.headers["x-model"] == f"quality_x{scale}"


def test_the_clean_model_setting_makes_auto_run_the_quality_tier_and_its_jpeg_models(tmp_path):
    png = encode_image(Image.fromarray(smooth_image(48, 40)))
    with serving(tmp_path, clean_model="quality") as (_, c):
        assert upscale(c, png).headers["x-model"] == "quality_x2"
        assert c.get("/v1/models").json()["clean_model"] == "quality"
        own, borrowed = served_bands(c, "jpeg_quality", "quality"), served_bands(c, "jpeg_quality", scale=3)
        assert own and borrowed, "the quality tier has no JPEG models of its own at x2, or fast none at x3"
        assert not served_bands(c, "jpeg_quality"), "fast's x2 JPEG bands are listed though auto does not use them"
        for quality in (30, 50, 75, 90, 98):
            assert upscale(c, jpeg(quality)).headers["x-model"] == expected_model(own, quality, "quality_x2")
            ran = upscale(c, jpeg(quality), scale=3).headers["x-model"]
            assert ran == expected_model(borrowed, quality, "quality_x3")  # fast's JPEG models: quality has none at x3
