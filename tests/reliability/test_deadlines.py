"""Deadlines and cancellation over real HTTP: abandoned work leaves the queue and is not run for nobody.

A request past its deadline is answered 504 and its remaining tiles are dropped; a client that hangs up
has its pending tiles dropped too. Both are read from /metrics: upscaler_queue_tiles back to 0 and
upscaler_tiles_total no longer growing, well short of the job's tile count.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.conftest import Server, encode_image, smooth_image, start_server, stop_server

from .helpers import assert_clean_log, assert_json_error, metric_sum, raw_exchange, unexpected_5xx, wait_for

TILE = 16
SIDE = 2048  # (2048 / 16)^2 = 16384 tiles: seconds of work on any CPU
JOB_TILES = (SIDE // TILE) ** 2
SETTLE_S = 10  # generous bound for the queue to empty after the deadline or the hang-up


@pytest.fixture(scope="module")
def big_flat_png() -> bytes:
    return encode_image(Image.new("RGB", (SIDE, SIDE), (120, 60, 30)))  # a few kB, cheap to decode


def _server(tmp_path_factory, timeout: float) -> Server:
    return start_server(
        tmp_path_factory.mktemp("deadline"), tile=TILE, max_batch=8, request_timeout_s=timeout, codec_threads=1
    )


@pytest.fixture(scope="module")
def strict_deadline(tmp_path_factory) -> Iterator[Server]:
    srv = _server(tmp_path_factory, timeout=1.0)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> Iterator[Server]:
    srv = _server(tmp_path_factory, timeout=120)
    yield srv
    stop_server(srv)


def _tiles_stop_growing(url: str) -> float:
    """Wait until the queue is empty and upscaler_tiles_total holds still; return that total."""
    assert wait_for(lambda: metric_sum(url, "upscaler_queue_tiles") == 0, timeout=SETTLE_S), "the queue never emptied"
    before = metric_sum(url, "upscaler_tiles_total")
    time.sleep(0.5)  # longer than any batch of 8 small tiles takes
    after = metric_sum(url, "upscaler_tiles_total")
    assert after - before <= 8, f"tiles kept running after the request was abandoned ({before} -> {after})"
    return after


def test_past_deadline_is_a_504_and_its_tiles_leave_the_queue(strict_deadline, big_flat_png, figures):
    url = strict_deadline.url
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/v1/upscale", content=big_flat_png, headers={"Content-Type": "image/png"}, timeout=60)
    answered = time.perf_counter() - t0
    assert_json_error(r, (503, 504))
    total = _tiles_stop_growing(url)
    figures["deadline"] = {
        "deadline_s": 1.0,
        "status": r.status_code,
        "answered_after_s": round(answered, 2),
        "job_tiles": JOB_TILES,
        "tiles_run": int(total),
        "unexpected_5xx": unexpected_5xx(strict_deadline),
    }
    assert answered < 1.0 + SETTLE_S
    assert total < JOB_TILES, "the abandoned job ran to the end anyway"
    assert figures["deadline"]["unexpected_5xx"] == 0
    # And the server goes on serving.
    small = encode_image(Image.fromarray(smooth_image(24, 24)))
    assert httpx.post(f"{url}/v1/upscale", content=small, timeout=30).status_code == 200
    assert_clean_log(strict_deadline)


def test_client_that_hangs_up_has_its_tiles_dropped(patient, big_flat_png, figures):
    url = patient.url
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{url}/v1/upscale",
            content=big_flat_png,
            headers={"Content-Type": "image/png"},
            timeout=httpx.Timeout(30, read=0.5),
        )
    hung_up = time.perf_counter()
    at_hang_up = metric_sum(url, "upscaler_tiles_total")
    total = _tiles_stop_growing(url)
    figures["disconnect"] = {
        "job_tiles": JOB_TILES,
        "tiles_run_before_hang_up": int(at_hang_up),
        "tiles_run_in_all": int(total),
        "settled_after_s": round(time.perf_counter() - hung_up, 2),
        "unexpected_5xx": unexpected_5xx(patient),
    }
    assert total < JOB_TILES, "the job ran to the end for a client that was gone"
    assert wait_for(lambda: '"status": 499' in patient.log(), timeout=5), "the request was not logged as abandoned"
    assert metric_sum(url, "upscaler_inflight_requests") <= 1  # only this /metrics request
    assert_clean_log(patient)


@pytest.mark.parametrize("content_type", ["image/png", "multipart/form-data; boundary=xyz"])
def test_client_that_hangs_up_halfway_through_the_upload_is_no_server_error(patient, content_type):
    """Content-Length promises 1 MB, 100 kB arrive, the connection closes: a 499 in the log, no traceback."""
    head = (
        f"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 1000000\r\n\r\n"
    ).encode()
    preamble = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    before = patient.log().count('"status": 499')
    raw_exchange(patient, head, [preamble if "multipart" in content_type else b"", b"\0" * 100_000], read_timeout=0.3)
    assert wait_for(lambda: patient.log().count('"status": 499') > before, timeout=5), patient.log()[-2000:]
    assert httpx.get(f"{patient.url}/healthz").status_code == 200
    assert_clean_log(patient)
