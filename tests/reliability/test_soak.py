"""Soak: thousands of small requests at concurrency 8; the server's memory must level off (no leak in the
engine, batcher or codecs). RELIABILITY_SOAK_REQUESTS changes the count (default 4000)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle

import httpx
from PIL import Image

from tests.conftest import encode_image, smooth_image, start_server, stop_server

from .helpers import assert_clean_log, metric_sum, rss_mb, unexpected_5xx

REQUESTS = int(os.environ.get("RELIABILITY_SOAK_REQUESTS", "4000"))
CONCURRENCY = 8
WARMUP = max(REQUESTS // 10, 50)  # allocator pools and caches fill up here; growth is measured after it
RSS_GROWTH_LIMIT_MB = 16  # over the measured part (after the warm-up): a leak of 5 kB a request shows
TIME_LIMIT_S = 240  # a hard stop; it takes well under a minute


def test_soak_small_requests_memory_levels_off(tmp_path, figures):
    srv = start_server(tmp_path, tile=16, max_batch=8)
    inputs = [
        (encode_image(Image.fromarray(smooth_image(16, 16, seed=i)), fmt), fmt, out)
        for i, (fmt, out) in enumerate([("PNG", "png"), ("JPEG", "jpeg"), ("PNG", "webp"), ("JPEG", "png")])
    ]
    local = threading.local()
    failures: list[str] = []
    samples: list[tuple[int, float]] = []
    done = 0
    lock = threading.Lock()
    deadline = time.monotonic() + TIME_LIMIT_S

    def one(job: tuple[bytes, str, str]) -> None:
        nonlocal done
        if time.monotonic() > deadline:
            return
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=srv.url, timeout=60)
        body, fmt, out = job
        r = local.client.post("/v1/upscale", content=body, params={"format": out, "scale": 2})
        ok = r.status_code == 200 and r.headers["content-type"] == f"image/{out}" and len(r.content) > 0
        with lock:
            done += 1
            if not ok:
                failures.append(f"{r.status_code} {r.text[:200]}")
            if done % 100 == 0:
                samples.append((done, rss_mb(srv)))

    try:
        started = time.monotonic()
        jobs = cycle(inputs)
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(one, [next(jobs) for _ in range(REQUESTS)]))
        seconds = time.monotonic() - started
        queue = metric_sum(srv.url, "upscaler_queue_tiles")
    finally:
        stop_server(srv)
    after_warmup = [rss for n, rss in samples if n >= WARMUP]
    growth = after_warmup[-1] - after_warmup[0]
    figures["soak"] = {
        "requests": done,
        "concurrency": CONCURRENCY,
        "failures": len(failures),
        "seconds": round(seconds, 1),
        "requests_per_s": round(done / seconds, 1),
        "rss_mb_after_warmup": round(after_warmup[0], 1),
        "rss_mb_end": round(after_warmup[-1], 1),
        "rss_growth_mb": round(growth, 1),
        "rss_mb_max": round(max(rss for _, rss in samples), 1),
        "unexpected_5xx": unexpected_5xx(srv),
    }
    assert done == REQUESTS, f"only {done} of {REQUESTS} requests in {TIME_LIMIT_S} s"
    assert not failures, failures[:5]
    assert queue == 0
    assert figures["soak"]["unexpected_5xx"] == 0
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS grew {growth:.1f} MiB over {done - WARMUP} requests: {samples}"
    assert_clean_log(srv)
