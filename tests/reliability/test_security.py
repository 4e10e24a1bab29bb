"""Security: API keys and their exemptions, the body limit enforced while streaming, no internals in errors."""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image

from service.http import middleware
from service.http.app import create_app
from service.settings import Settings
from tests.conftest import Server, encode_image, smooth_image, start_server, stop_server
from tests.reliability.conftest import LIMITS

from .helpers import assert_clean_log, assert_json_error, raw_exchange, rss_mb, unexpected_5xx

KEYS = ["key-one-0123456789", "key-two-abcdefghij"]


@pytest.fixture(scope="module")
def locked(tmp_path_factory) -> Iterator[Server]:
    """API keys on, and only the probes exempt (the default also exempts /metrics, /, /docs, /openapi.json)."""
    keys = '["{}", "{}"]'.format(*KEYS)
    srv = start_server(
        tmp_path_factory.mktemp("locked"), tile=32, api_keys=keys, public_paths='["/healthz", "/readyz"]'
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def png() -> bytes:
    return encode_image(Image.fromarray(smooth_image(16, 16)))


WRONG_KEYS = [
    {},
    {"X-API-Key": ""},
    {"X-API-Key": "wrong"},
    {"X-API-Key": KEYS[0][:-1]},  # a prefix
    {"X-API-Key": KEYS[0] + "x"},  # one character more
    {"X-API-Key": KEYS[0].upper()},
    {"X-API-Key": f"{KEYS[0]},{KEYS[1]}"},
    {"Authorization": "Bearer"},
    {"Authorization": f"Basic {KEYS[0]}"},
    {"Authorization": f"Bearer {KEYS[0]}-"},
    {"X-Api-Key-Not": KEYS[0]},
]


@pytest.mark.parametrize("headers", WRONG_KEYS, ids=[str(i) for i in range(len(WRONG_KEYS))])
@pytest.mark.parametrize("path", ["/v1/upscale", "/v1/models", "/metrics", "/openapi.json", "/docs", "/static/x"])
def test_missing_or_wrong_key_is_a_401(locked, png, path, headers):
    if path == "/v1/upscale":
        r = httpx.post(f"{locked.url}{path}", content=png, headers=headers)
    else:
        r = httpx.get(f"{locked.url}{path}", headers=headers)
    body = assert_json_error(r, 401, "unauthorized")
    assert r.headers["x-request-id"]
    for value in headers.values():
        if len(value) > 8:
            assert value not in r.text, "the error echoes the key that was sent"
    assert "key-" not in body["message"]


@pytest.mark.parametrize(
    "headers", [{"X-API-Key": KEYS[0]}, {"X-API-Key": KEYS[1]}, {"Authorization": f"Bearer {KEYS[1]}"}]
)
def test_right_key_is_accepted(locked, png, headers):
    assert httpx.post(f"{locked.url}/v1/upscale", content=png, headers=headers).status_code == 200
    assert httpx.get(f"{locked.url}/metrics", headers=headers).status_code == 200


def test_configured_public_paths_need_no_key(locked):
    assert httpx.get(f"{locked.url}/healthz").status_code == 200
    assert httpx.get(f"{locked.url}/readyz").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/healthz/../v1/models",
        "/healthz/%2e%2e/v1/models",
        "/healthz%2F..%2Fv1/models",
        "//v1/models",
        "/v1/models/",
        "/V1/models",
        "/healthzz",
        "/healthz/x/../../metrics",
    ],
)
def test_public_path_tricks_do_not_open_protected_routes(locked, path):
    r = httpx.get(f"{locked.url}{path}")
    assert r.status_code in (401, 404), (path, r.status_code, r.text[:200])
    assert "models" not in r.json().get("error", {}).get("code", "")


def test_blank_api_key_is_refused_at_start_up(tmp_path):
    """An empty key would match requests that send none: the service must not start with one."""
    with pytest.raises(RuntimeError, match="exited"):
        start_server(tmp_path, api_keys='["", "real-key"]')
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "empty key" in log


def test_keys_are_compared_in_constant_time():
    """Timing is not measured here (too noisy on a shared machine); the comparison is hmac.compare_digest
    against every key, whichever matches."""
    source = inspect.getsource(middleware.authorized)
    assert "compare_digest" in source and "any(matches)" in source


# --- the body limit is enforced while the body streams in ---------------------------------------------------------


def test_declared_content_length_over_the_limit_is_refused_before_any_body(rserver):
    head = b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 10000000000\r\n\r\n"
    t0 = time.perf_counter()
    answer = raw_exchange(rserver, head, read_timeout=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.perf_counter() - t0 < 5
    assert b'"too_large"' in answer


def _send_until_answered(server: Server, head: bytes, total: int) -> tuple[int, bytes]:
    """Send ``head``, then chunks of zeros up to ``total`` bytes, stopping as soon as an answer arrives."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    answer = bytearray()
    answered = threading.Event()

    def read(sock: socket.socket) -> None:
        try:
            while data := sock.recv(65536):
                answer.extend(data)
                answered.set()
                if b"}}" in answer:
                    break
        except OSError:
            pass
        answered.set()

    sent, piece = 0, b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        reader = threading.Thread(target=read, args=(sock,))
        reader.start()
        try:
            sock.sendall(head)
            while sent < total and not answered.is_set():
                sock.sendall(piece)
                sent += 65536
                time.sleep(0.001)  # a steady upload, not a flood
        except OSError:  # the server answered and closed
            pass
        answered.wait(30)
        reader.join(30)
    return sent, bytes(answer)


@pytest.mark.parametrize("multipart", [False, True], ids=["raw", "multipart"])
def test_chunked_body_over_the_limit_is_refused_while_it_is_still_being_sent(rserver, figures, multipart):
    """A chunked body of 10x the limit, no Content-Length: the 413 comes back before we are done sending,
    and the server's memory does not grow by the body."""
    limit = LIMITS["max_body_bytes"]
    total = 10 * limit
    content_type = b"multipart/form-data; boundary=xyz" if multipart else b"image/png"
    head = b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
    head %= content_type
    if multipart:
        part = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        head += b"%x\r\n%s\r\n" % (len(part), part)
    rss_before = rss_mb(rserver)
    sent, answer = _send_until_answered(rserver, head, total)
    rss_growth = rss_mb(rserver) - rss_before
    figures.setdefault("body_limit", {})["multipart" if multipart else "raw"] = {
        "limit_bytes": limit,
        "sent_bytes_when_refused": sent,
        "body_bytes_offered": total,
        "server_rss_growth_mb": round(rss_growth, 1),
        "unexpected_5xx": unexpected_5xx(rserver),
    }
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"too_large"' in answer
    assert sent < total, "the server waited for the whole body before refusing it"
    assert rss_growth < total / 2**20 / 2, "the server's memory grew with the body"


def test_rserver_logged_no_unhandled_error(rserver):
    assert httpx.get(f"{rserver.url}/healthz").status_code == 200
    assert_clean_log(rserver)


# --- an unexpected failure is a 500 that tells nothing of the inside ------------------------------------------------


def test_internal_error_is_a_json_500_without_internals(caplog):
    """Drive the app in-process with a pipeline that fails the way a bug would, with a path in its message."""
    app = create_app(Settings())
    state = app.state.service

    class Broken:
        async def run(self, *args, **kwargs):
            raise RuntimeError("boom in /work/main/service/secret.py line 42")

    state.ready, state.pipeline = True, Broken()
    state.engine = SimpleNamespace(specs={("fast", 2): None})

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # no lifespan: no models loaded
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.post("/v1/upscale", content=b"whatever", headers={"Content-Type": "image/png"})

    r = asyncio.run(call())
    body = assert_json_error(r, 500, "internal")
    assert "boom" not in r.text and "secret" not in r.text
    assert r.headers["x-request-id"] in body["message"] or "logged" in body["message"]
    assert any("unhandled error" in rec.getMessage() for rec in caplog.records)
