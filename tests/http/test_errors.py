"""Every error class answers with its status and a JSON body naming the problem; none is a 500."""

import struct
import threading
import time
import zlib

import httpx
import pytest
from PIL import Image

from tests.conftest import encode_image, png_chunk, smooth_image, start_server, stop_server

KEY = "s3cret-key"
BIG = encode_image(Image.new("RGB", (1000, 1000), (120, 60, 30)))  # 1 MP, a few kB


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, followed by one tiny IDAT and IEND."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + png_chunk(b"IEND", b"")


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()["error"]
    assert body["code"] == code and body["message"]
    assert "Traceback" not in body["message"] and "/work" not in body["message"]
    return body


def post(client, data: bytes, content_type: str = "image/png", **params) -> httpx.Response:
    return client.post("/v1/upscale", content=data, headers={"Content-Type": content_type}, params=params)


@pytest.fixture(scope="module")
def png():
    return encode_image(Image.fromarray(smooth_image(20, 24)))


# --- against the default server -------------------------------------------------------------------------------


def test_unknown_model_is_a_400_naming_what_is_served(client, png):
    body = assert_error(post(client, png, model="nope"), 400, "bad_parameter")
    assert "fast x2" in body["message"]


@pytest.mark.parametrize(
    "params",
    [{"scale": 7}, {"scale": "two"}, {"format": "gif"}, {"quality": 0}, {"quality": 101}, {"model": "m" * 100}],
)
def test_out_of_range_query_values_are_a_422(client, png, params):
    assert_error(post(client, png, **params), 422, "validation_error")


@pytest.mark.parametrize("data", [b"", b"hello, I am text", bytes(range(256)) * 4], ids=["empty", "text", "random"])
def test_bodies_that_are_not_images_are_a_415(client, data):
    assert_error(post(client, data), 415, "unsupported_image")


@pytest.mark.parametrize("cut", [8, 30, 60, 0.5, 0.9])
def test_truncated_png_is_a_415(client, cut):
    data = encode_image(Image.fromarray(smooth_image(64, 64)))
    end = int(len(data) * cut) if isinstance(cut, float) else cut
    assert_error(post(client, data[:end]), 415, "unsupported_image")


def test_truncated_jpeg_is_a_415(client):
    data = encode_image(Image.fromarray(smooth_image(64, 64)), "JPEG")
    assert_error(post(client, data[: len(data) // 2], "image/jpeg"), 415, "unsupported_image")


def test_non_image_content_type_is_a_415(client, png):
    assert_error(post(client, png, "application/json"), 415, "unsupported_image")


def test_animated_gif_is_a_415(client):
    frames = [Image.fromarray(smooth_image(16, 16, seed=i)) for i in range(3)]
    data = encode_image(frames[0], "GIF", save_all=True, append_images=frames[1:])
    body = assert_error(post(client, data, "image/gif"), 415, "unsupported_image")
    assert "animated" in body["message"]


def test_header_claiming_100000_by_100000_is_a_413_before_decoding(client):
    assert_error(post(client, png_header_only(100_000, 100_000)), 413, "too_large")


def test_multipart_without_image_field_is_a_400(client, png):
    r = client.post("/v1/upscale", files={"picture": ("a.png", png, "image/png")})
    assert_error(r, 400, "bad_parameter")


def test_unknown_path_is_a_json_404(client):
    assert_error(client.get("/v2/nothing"), 404, "not_found")


def test_wrong_method_is_a_json_405(client):
    assert_error(client.get("/v1/upscale"), 405, "method_not_allowed")


def test_server_stays_healthy_after_bad_input(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


# --- against a server with tight limits and API keys ----------------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("strict"),
        tile=16,
        max_batch=4,
        max_queue_tiles=64,
        request_timeout_s=0.5,
        max_body_bytes=2_000_000,
        max_input_pixels=1_100_000,
        max_output_pixels=5_000_000,
        api_keys=f'["{KEY}", "other-key"]',
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def sclient(strict):
    with httpx.Client(base_url=strict.url, timeout=60, headers={"X-API-Key": KEY}) as c:
        yield c


def test_missing_or_wrong_api_key_is_a_401(strict, png):
    assert_error(httpx.post(f"{strict.url}/v1/upscale", content=png), 401, "unauthorized")
    r = httpx.post(f"{strict.url}/v1/upscale", content=png, headers={"X-API-Key": "wrong"})
    assert_error(r, 401, "unauthorized")


def test_right_api_key_as_header_or_bearer_is_accepted(strict, png):
    for headers in ({"X-API-Key": KEY}, {"Authorization": "Bearer other-key"}):
        r = httpx.post(f"{strict.url}/v1/upscale", content=png, headers={"Content-Type": "image/png", **headers})
        assert r.status_code == 200


def test_probes_and_metrics_need_no_key(strict):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{strict.url}{path}").status_code == 200


def test_body_over_the_byte_limit_is_a_413(sclient):
    assert_error(post(sclient, b"\x89PNG" + b"\0" * 2_100_000), 413, "too_large")


def test_body_over_the_byte_limit_without_content_length_is_a_413(sclient):
    def chunks():
        for _ in range(40):
            yield b"\0" * 65536

    r = sclient.post("/v1/upscale", content=chunks(), headers={"Content-Type": "image/png"})
    assert_error(r, 413, "too_large")


def test_image_over_the_pixel_limit_is_a_413(sclient):
    data = encode_image(Image.new("RGB", (1200, 1000)))
    assert "1100000" in assert_error(post(sclient, data), 413, "too_large")["message"]


def test_output_over_the_pixel_limit_is_a_413(sclient):
    data = encode_image(Image.new("RGB", (600, 600)))  # x4 = 5.76 MP > 5 MP
    assert_error(post(sclient, data, scale=4), 413, "too_large")


def _queue_tiles(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("upscaler_queue_tiles "):
            return float(line.split()[1])
    return 0.0


def test_deadline_is_a_504_and_its_tiles_leave_the_queue(tmp_path):
    # ~4000 tiles of 16 px against a 50 ms deadline: at least ten times longer on any CPU (a fast one ran them all
    # in under the strict server's 0.5 s).
    srv = start_server(tmp_path, tile=16, max_batch=4, request_timeout_s=0.05)
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            r = client.post("/v1/upscale", params={"scale": 2}, content=BIG)
            assert_error(r, 504, "deadline_exceeded")
        deadline = time.monotonic() + 5
        while _queue_tiles(srv.url) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _queue_tiles(srv.url) == 0
    finally:
        stop_server(srv)


def test_full_queue_is_a_503_with_retry_after(strict, sclient, png):
    big = threading.Thread(target=post, args=(sclient, BIG))
    big.start()
    try:
        deadline = time.monotonic() + 10
        while _queue_tiles(strict.url) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = post(sclient, encode_image(Image.fromarray(smooth_image(200, 200))))
        assert_error(r, 503, "overloaded")
        assert int(r.headers["retry-after"]) >= 1
    finally:
        big.join()
    assert httpx.get(f"{strict.url}/healthz").status_code == 200


def test_no_unhandled_exception_was_logged(strict, server):
    for srv in (strict, server):
        assert "Traceback" not in srv.log() and "unhandled error" not in srv.log()
