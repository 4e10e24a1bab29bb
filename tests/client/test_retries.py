"""What the batch client retries, against real sockets: a TCP proxy on 127.0.0.1 in front of the real service that
resets, closes or answers 502 on its first connections, then passes everything through.

The upscale is idempotent, so every failure whose request may or may not have been served is retried, with backoff
and a bound; a request that would fail the same way again is not.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time

import httpx
import pytest

from client.balancer import Balancer
from client.batch import BatchOptions, upscale_batch
from client.service_client import RETRYABLE_ERRORS, ServiceClient, UpscaleFailed
from tests.client.test_batch_client import SMALL_SERVER, write_image
from tests.conftest import decode_image, free_port, start_server, stop_server


class FaultyProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``; its first connections misbehave as ``script`` says, one action
    each: "reset" (reads the request, then RST), "close" (reads it, then closes without a word), "502" (answers 502
    and closes); after the script, "pass" (bytes both ways)."""

    def __init__(self, upstream: str, script: list[str]):
        self.upstream_port = int(upstream.rsplit(":", 1)[1])
        self.script, self.seen = list(script), []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        start = asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result()
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        action = self.script.pop(0) if self.script else "pass"
        self.seen.append(action)
        if action == "pass":
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(v) for k, _, v in _headers(head) if k == "content-length"), 0)
        await reader.readexactly(length)
        if action == "reset":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif action == "502":
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()


def _headers(head: bytes):
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip().lower(), sep, value.strip()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("retry-server"), **SMALL_SERVER)
    yield srv
    stop_server(srv)


def run_batch(tmp_path, server: str, **options):
    batch = BatchOptions(inputs=[str(tmp_path / "in")], out=tmp_path / "out", servers=[server], **options)
    return asyncio.run(upscale_batch(batch))


def test_reset_closed_and_502_connections_are_retried_until_the_image_is_done(service, tmp_path):
    write_image(tmp_path / "in" / "a.png", 20, 30)
    proxy = FaultyProxy(service.url, ["reset", "close", "502"])
    try:
        report = run_batch(tmp_path, proxy.url, backoff=0.05, concurrency=1)
    finally:
        proxy.close()
    assert proxy.seen == ["reset", "close", "502", "pass"]
    assert (report.done, report.failed, report.retries) == (1, 0, 3)
    # A reset reads as ReadError, a close before any answer as RemoteProtocolError: both counted, both retried.
    assert report.errors == {"ReadError": 1, "RemoteProtocolError": 1, "502": 1}
    assert {httpx.ReadError, httpx.RemoteProtocolError} <= set(RETRYABLE_ERRORS)
    assert decode_image((tmp_path / "out" / "a.png").read_bytes()).size == (60, 40)
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["errors"] == report.errors and written["retries"] == 3


def test_retries_are_bounded_and_back_off(service, tmp_path):
    write_image(tmp_path / "in" / "a.png")
    proxy = FaultyProxy(service.url, ["reset"] * 10)
    started = time.monotonic()
    try:
        report = run_batch(tmp_path, proxy.url, backoff=0.2, retries=3, concurrency=1)
    finally:
        proxy.close()
    elapsed = time.monotonic() - started
    assert proxy.seen == ["reset"] * 4  # the first attempt and 3 retries, no more
    (failure,) = report.failures
    assert failure.attempts == 4 and "gave up after 4 attempts" in failure.reason
    assert sum(report.errors.values()) == 4
    # Waits of 0.2, 0.4, 0.8 s, each less at most half its length (jitter): at least 0.7 s in all.
    assert elapsed >= 0.7


def test_a_refused_connection_is_retried_on_the_next_replica(service, tmp_path):
    for i in range(4):
        write_image(tmp_path / "in" / f"{i}.png", seed=i)
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    batch = BatchOptions(
        inputs=[str(tmp_path / "in")], out=tmp_path / "out", servers=[refused, service.url], backoff=0.05
    )
    report = asyncio.run(upscale_batch(batch))
    assert (report.done, report.failed) == (4, 0)
    assert report.errors.get("ConnectError", 0) >= 1 and set(report.errors) == {"ConnectError"}


def test_an_error_that_would_happen_again_is_not_retried():
    async def attempt():
        async with httpx.AsyncClient() as http:
            client = ServiceClient(http, Balancer(["ftp://127.0.0.1:21"]), params={}, retries=5, backoff=0.01)
            with pytest.raises(UpscaleFailed) as failed:
                await client.upscale(b"\x89PNG", "image/png", "png")
            return failed.value, client

    failure, client = asyncio.run(attempt())
    assert failure.attempts == 1 and "UnsupportedProtocol" in failure.reason
    assert (client.retried, dict(client.errors)) == (0, {"UnsupportedProtocol": 1})
