"""Graceful shutdown: SIGTERM under load loses no accepted request and exits 0 within the grace period.

After the signal /readyz answers 503 while the service keeps serving for UPSCALER_DRAIN_SECONDS (load
balancers stop sending work); then uvicorn stops accepting, lets the requests in flight finish, and the
process exits 0.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
from PIL import Image

from tests.conftest import encode_image, smooth_image, start_server

from .helpers import assert_clean_log, unexpected_5xx

DRAIN_S = 2.0
STOP_SENDING_S = 0.6  # after SIGTERM: well inside the drain, so no request races uvicorn's stop
GRACE_S = 60  # uvicorn's timeout_graceful_shutdown in service/__main__.py
WORKERS = 4


def test_sigterm_under_load_loses_no_accepted_request(tmp_path, figures):
    srv = start_server(
        tmp_path, tile=16, max_batch=8, max_queue_tiles=65536, request_timeout_s=60, drain_seconds=DRAIN_S
    )
    small = encode_image(Image.fromarray(smooth_image(128, 128)))
    long = encode_image(Image.new("RGB", (1536, 1536), (10, 200, 90)))  # 9216 tiles: in flight past the drain
    outcomes: list[tuple[str, float, int | str]] = []
    long_done: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def record(kind: str, sent: float, result: int | str) -> None:
        with lock:
            outcomes.append((kind, sent, result))

    def worker() -> None:
        with httpx.Client(base_url=srv.url, timeout=GRACE_S) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    record("small", sent, c.post("/v1/upscale", content=small).status_code)
                except httpx.HTTPError as exc:
                    record("small", sent, type(exc).__name__)

    def long_request() -> None:
        sent = time.monotonic()
        try:
            record("long", sent, httpx.post(f"{srv.url}/v1/upscale", content=long, timeout=GRACE_S).status_code)
        except httpx.HTTPError as exc:
            record("long", sent, type(exc).__name__)
        long_done.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # under load
    longs = [threading.Thread(target=long_request) for _ in range(2)]
    for t in longs:
        t.start()
    time.sleep(0.3)
    signalled = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    try:
        ready_statuses = []
        while time.monotonic() - signalled < STOP_SENDING_S:  # the drain: not ready, but still serving
            ready_statuses.append(httpx.get(f"{srv.url}/readyz", timeout=5).status_code)
            assert httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 200
            time.sleep(0.05)
        stop.set()  # a load balancer has noticed /readyz by now: no new requests
        for t in threads + longs:
            t.join(GRACE_S)
        returncode = srv.process.wait(timeout=GRACE_S)
        exited = time.monotonic() - signalled
    finally:
        if srv.process.poll() is None:
            srv.process.kill()
    sent = len(outcomes)
    ok = sum(1 for _, _, result in outcomes if result == 200)
    during_drain = sum(1 for _, t, _ in outcomes if t >= signalled)
    figures["shutdown"] = {
        "drain_s": DRAIN_S,
        "requests_sent": sent,
        "sent_after_sigterm": during_drain,
        "answered_200": ok,
        "lost": sent - ok,
        "long_requests_finishing_after_the_drain": sum(1 for t in long_done if t > signalled + DRAIN_S),
        "exit_code": returncode,
        "exit_after_s": round(exited, 2),
        "unexpected_5xx": unexpected_5xx(srv),
    }
    assert ready_statuses and ready_statuses[-1] == 503
    assert 200 not in ready_statuses[ready_statuses.index(503) :], "/readyz went back to 200 while draining"
    assert all(result == 200 for _, _, result in outcomes), [o for o in outcomes if o[2] != 200]
    assert sum(1 for kind, _, result in outcomes if kind == "long" and result == 200) == 2
    assert during_drain > 0, "requests sent while draining were served"
    assert returncode == 0
    assert figures["shutdown"]["unexpected_5xx"] == 0
    assert DRAIN_S <= exited < DRAIN_S + GRACE_S
    log = srv.log()
    assert "draining" in log and "Finished server process" in log
    assert_clean_log(srv)
