"""Small tools shared by the reliability tests: metrics, memory, error bodies, raw sockets, server logs."""

from __future__ import annotations

import re
import socket
import time

import httpx
import psutil

from tests.conftest import Server

# What must never reach a client: a Python traceback, a source file, a server path.
LEAKS = re.compile(r"Traceback|File \"|\.py\b|/work/|site-packages|/home/|/usr/|/tmp/")
UNHANDLED = ("Traceback", "unhandled error")


def rss_mb(server: Server) -> float:
    """Resident memory of the server process, in MiB."""
    return psutil.Process(server.process.pid).memory_info().rss / 2**20


def metrics(url: str) -> dict[str, float]:
    """The Prometheus samples of /metrics, keyed by their full name with labels."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric_sum(url: str, prefix: str) -> float:
    """The sum of every sample whose name (with labels) starts with ``prefix``, e.g. upscaler_tiles_total."""
    return sum(v for k, v in metrics(url).items() if k == prefix or k.startswith(prefix + "{"))


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def assert_json_error(r: httpx.Response, status: int | tuple[int, ...] | None = None, code: str | None = None) -> dict:
    """A 4xx/5xx with the service's JSON error body that leaks no trace or path; returns the error object."""
    statuses = (status,) if isinstance(status, int) else status
    assert 400 <= r.status_code < 600, f"{r.status_code}: {r.text[:300]}"
    if statuses:
        assert r.status_code in statuses, f"{r.status_code} not in {statuses}: {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()["error"]
    assert set(body) == {"code", "message"} and body["code"] and body["message"], body
    if code:
        assert body["code"] == code, body
    assert not LEAKS.search(r.text), f"the error body leaks internals: {r.text[:300]}"
    return body


def assert_clean_log(server: Server) -> None:
    log = server.log()
    for marker in UNHANDLED:
        assert marker not in log, f"{marker!r} in the server log:\n{log[-4000:]}"


def raw_exchange(server: Server, head: bytes, body_chunks=(), read_timeout: float = 5.0) -> bytes:
    """Send raw bytes on a fresh connection and read what comes back until close or ``read_timeout``."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    data = b""
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            sock.sendall(chunk)
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and _complete(data):
                    break
        except (TimeoutError, ConnectionError):
            pass
    return data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def unexpected_5xx(server: Server) -> int:
    """Requests the server answered with a 5xx other than the designed 503 (shed, draining) and 504 (deadline)."""
    count = 0
    for line in server.log().splitlines():
        if "service.access" in line:
            status = int(re.search(r'"status": (\d+)', line).group(1))
            count += status >= 500 and status not in (503, 504)
    return count
