"""Fair turns through the real server: a small request sent while a big one of another model or scale is running is
answered while the big one still has tiles waiting, and both get an answer of the right size from their own model
(runtime/test_batcher.py holds the scheduler's rules batch by batch; bench/mixed_traffic.py the figures)."""

import re
import threading

import httpx
import pytest
from PIL import Image

from tests.conftest import decode_image, encode_image, smooth_image

BIG = (1536, 2048)  # (height, width): hundreds of tiles at the session server's tile of 64


@pytest.fixture(scope="module")
def big_image() -> Image.Image:
    return Image.fromarray(smooth_image(*BIG))


def small_png() -> bytes:
    return encode_image(Image.fromarray(smooth_image(256, 256, seed=1)))


def small_jpeg() -> bytes:
    return encode_image(Image.fromarray(smooth_image(256, 256, seed=2)), "JPEG", quality=50)


CASES = {  # big: format and scale; small: its file (at x2)
    "big JPEG q90 at x4, small PNG": ("JPEG", 4, small_png),
    "big PNG at x4, small PNG": ("PNG", 4, small_png),
    "big PNG at x2, small JPEG q50": ("PNG", 2, small_jpeg),
}


def queued_tiles(client: httpx.Client) -> int:
    return int(float(re.search(r"^upscaler_queue_tiles (\S+)$", client.get("/metrics").text, re.M)[1]))


@pytest.mark.parametrize("case", CASES)
def test_a_small_request_is_answered_while_a_big_one_of_another_model_has_tiles_left(server, client, big_image, case):
    fmt, scale, small = CASES[case]
    big_data = encode_image(big_image, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    big: dict[str, httpx.Response] = {}

    def send_big() -> None:
        params = {"scale": scale, "format": "jpeg"}
        big["response"] = httpx.post(f"{server.url}/v1/upscale", content=big_data, params=params, timeout=300)

    sender = threading.Thread(target=send_big)
    sender.start()
    while queued_tiles(client) == 0:  # decoded, and its tiles queued
        assert sender.is_alive(), big["response"].text
    response = client.post("/v1/upscale", content=small(), params={"scale": 2})
    left = queued_tiles(client)  # the big one's tiles still waiting (under by-model scheduling: none)
    sender.join()

    assert response.status_code == 200, response.text
    assert decode_image(response.content).size == (512, 512)
    assert left > 0
    answer = big["response"]
    assert answer.status_code == 200, answer.text
    assert decode_image(answer.content).size == (BIG[1] * scale, BIG[0] * scale)
    assert answer.headers["x-model"] != response.headers["x-model"]  # the two ran different models
