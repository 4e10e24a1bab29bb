"""Overload: a burst of 4x what the bounded tile queue holds.

Accepted requests succeed within their deadline; the rest are shed at once with 503 and Retry-After;
/healthz keeps answering throughout; the server's memory stays bounded; the queue empties afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.conftest import Server, encode_image, smooth_image, start_server, stop_server

from .helpers import assert_clean_log, assert_json_error, metric_sum, rss_mb, unexpected_5xx, wait_for

TILE = 16
QUEUE_TILES = 1024
SIDE = 256  # each request: (256 / 16)^2 = 256 tiles, so the queue holds 4 of them
CAPACITY = QUEUE_TILES // (SIDE // TILE) ** 2
BURST = 4 * CAPACITY
TIMEOUT_S = 30
REJECT_WITHIN_S = 1.0  # generous: measured in milliseconds
HEALTH_WITHIN_S = 2.0
RSS_GROWTH_LIMIT_MB = 256


@pytest.fixture(scope="module")
def busy(tmp_path_factory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("overload"),
        tile=TILE,
        max_batch=8,
        max_queue_tiles=QUEUE_TILES,
        request_timeout_s=TIMEOUT_S,
    )
    yield srv
    stop_server(srv)


def test_burst_of_four_times_capacity(busy, figures):
    body = encode_image(Image.fromarray(smooth_image(SIDE, SIDE)))
    results: list[tuple[int, float, httpx.Response]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(BURST)
    stop = threading.Event()
    health: list[tuple[int, float]] = []
    rss = [rss_mb(busy)]

    def one(i: int) -> None:
        with httpx.Client(base_url=busy.url, timeout=TIMEOUT_S + 30) as c:
            c.get("/healthz")  # connect first, so the burst arrives together
            barrier.wait()
            t0 = time.perf_counter()
            r = c.post("/v1/upscale", content=body, headers={"Content-Type": "image/png"})
            with lock:
                results.append((i, time.perf_counter() - t0, r))

    def watch() -> None:
        with httpx.Client(base_url=busy.url, timeout=30) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                status = c.get("/healthz").status_code
                health.append((status, time.perf_counter() - t0))
                rss.append(rss_mb(busy))
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(BURST)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S + 60)
    elapsed = time.perf_counter() - started
    stop.set()
    watcher.join()

    accepted = [(s, r) for _, s, r in results if r.status_code == 200]
    rejected = [(s, r) for _, s, r in results if r.status_code != 200]
    for _, r in rejected:
        assert_json_error(r, 503, "overloaded")
        assert int(r.headers["retry-after"]) >= 1
    reject_times = sorted(s for s, _ in rejected)
    figures["overload"] = {
        "queue_tiles": QUEUE_TILES,
        "capacity_requests": CAPACITY,
        "burst": BURST,
        "accepted": len(accepted),
        "rejected_503": len(rejected),
        "shed_rate": round(len(rejected) / BURST, 3),
        "reject_ms_median": round(1000 * reject_times[len(reject_times) // 2], 1) if reject_times else None,
        "reject_ms_max": round(1000 * reject_times[-1], 1) if reject_times else None,
        "accepted_s_max": round(max(s for s, _ in accepted), 2),
        "healthz_checks": len(health),
        "healthz_ms_max": round(1000 * max(s for _, s in health), 1) if health else None,
        "rss_mb_before": round(rss[0], 1),
        "rss_mb_peak": round(max(rss), 1),
        "burst_seconds": round(elapsed, 2),
        "unexpected_5xx": unexpected_5xx(busy),
    }
    assert len(results) == BURST, "every request got an answer"
    assert figures["overload"]["unexpected_5xx"] == 0
    assert len(accepted) >= CAPACITY, "the queue takes at least its capacity"
    assert rejected, "a burst of 4x capacity sheds some requests"
    assert all(s < TIMEOUT_S for s, _ in accepted)
    assert reject_times[-1] < REJECT_WITHIN_S, f"rejections took up to {reject_times[-1]:.3f} s"
    assert health and all(status == 200 for status, _ in health)
    assert max(s for _, s in health) < HEALTH_WITHIN_S
    assert max(rss) - rss[0] < RSS_GROWTH_LIMIT_MB


def test_queue_is_empty_and_server_healthy_after_the_burst(busy):
    assert wait_for(lambda: metric_sum(busy.url, "upscaler_queue_tiles") == 0, timeout=10)
    assert httpx.get(f"{busy.url}/readyz").status_code == 200
    body = encode_image(Image.fromarray(smooth_image(32, 32)))
    assert httpx.post(f"{busy.url}/v1/upscale", content=body, timeout=30).status_code == 200
    assert_clean_log(busy)
