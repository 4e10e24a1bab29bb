"""One server process: the app on uvicorn, with a drain before it stops.

On SIGTERM or SIGINT the server first drains: ``/readyz`` turns 503 while it
keeps serving for ``UPSCALER_DRAIN_SECONDS`` (so load balancers stop sending
work), then uvicorn stops accepting connections, finishes the requests in
flight and returns. A second signal stops at once.

Each request's line and headers must arrive within ``UPSCALER_HEADER_TIMEOUT_S``
of the connection or of the request's first byte, and be at most
``UPSCALER_MAX_HEADER_BYTES`` (uvicorn on httptools has neither limit: a client
that never finishes its headers would hold its connection forever); the body has
its own deadline (``service.http.uploads``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable

import uvicorn
from pythonjsonlogger.json import JsonFormatter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.http.app import ServiceState, create_app
from service.settings import Settings

__all__ = ["STARTUP_FAILURE", "DrainingServer", "configure_logging", "serve"]

log = logging.getLogger("service")

STARTUP_FAILURE = 3  # uvicorn's exit status when the app fails to start (models missing, no GPU, ...)


_LINGER_S = 1.0  # how long a refused connection's remaining bytes are drained before it is closed
_HEADER_TIMEOUT = (
    b'{"error": {"code": "header_timeout", "message": "the request line and headers did not arrive in time"}}'
)
_HEADERS_TOO_LARGE = (
    b'{"error": {"code": "headers_too_large", "message": "the request line and headers are larger than this server '
    b'takes; send fewer or shorter headers"}}'
)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline and a size limit for the request line and headers (httptools sets
    neither). The deadline is armed when the connection opens and at each request's first byte, and disarmed when
    the headers are complete; past it the client gets a 408 and the connection is closed. Past the size limit it
    gets a 431 and the connection is closed."""

    header_timeout_s = 10.0  # set per server by ``with_header_deadline``
    max_header_bytes = 262144
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _refused = False  # answered and closing: what else the parser finds in the data is not a request

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        # Bytes that begin no request (blank lines, the rest of a body the app did not read) stopped uvicorn's
        # keep-alive timer without starting a request: the connection must still end if nothing follows.
        if self._header_timer is None and not self._in_request() and not self.transport.is_closing():
            self._arm()

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_header_bytes(len(name) + len(value) + 4)  # ": " and CRLF

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes and not self._refused:
            self._disarm()
            self._refuse(b"431 Request Header Fields Too Large", _HEADERS_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._disarm()
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        self._refuse(b"408 Request Timeout", _HEADER_TIMEOUT)

    def _refuse(self, status: bytes, body: bytes) -> None:
        """Answer ``status`` unless an earlier answer is still being written (it cannot cut into one), and close the
        connection."""
        self._refused = True
        if self.cycle is None or self.cycle.response_complete:
            head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nconnection: close\r\n" % status
            self.transport.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        # A lingering close: the answer, then end of stream, while what the client still sends is read and dropped
        # for a moment. Closing at once, with its bytes unread, would reset the connection under the answer.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.transport.close)


def with_header_limits(seconds: float, max_bytes: int) -> type[HeaderDeadlineProtocol]:
    limits = {"header_timeout_s": seconds, "max_header_bytes": max_bytes}
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), limits)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before the stop. A second signal ends the drain at once; after that uvicorn's
    own rule applies (another SIGINT stops without waiting for the requests in flight)."""

    def __init__(self, config: uvicorn.Config, state: ServiceState):
        super().__init__(config)
        self.state = state
        self._drain: threading.Timer | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.state.draining:
            if self._drain:
                self._drain.cancel()
            return super().handle_exit(sig, frame)
        self.state.set_draining()
        delay = self.state.settings.drain_seconds
        log.info("draining: /readyz answers 503; stopping in %.1f s", delay)
        self._drain = threading.Timer(delay, super().handle_exit, args=(sig, frame))
        self._drain.daemon = True  # a stop that comes sooner must not wait for it
        self._drain.start()

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            # uvicorn re-raises the captured signal once it has stopped, so the process would die of SIGTERM
            # (exit status -15) even after a clean stop; it exits 0 instead. Only a forced stop keeps the signal.
            if len(self._captured_signals) == 1:
                self._captured_signals.clear()


def configure_logging(settings: Settings) -> None:
    """Log lines to stderr at ``UPSCALER_LOG_LEVEL``; with several processes each line names its process id. The
    access log (``service.access``) is JSON, one object per line, for log shippers to parse."""
    pid = " [%(process)d]" if settings.processes > 1 else ""
    logging.basicConfig(level=settings.log_level.upper(), format=f"%(asctime)s %(levelname)s{pid} %(name)s %(message)s")
    access = logging.StreamHandler()
    names = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}
    access.setFormatter(
        JsonFormatter("%(asctime)s %(levelname)s %(process)d %(name)s %(message)s", rename_fields=names)
    )
    access_log = logging.getLogger("service.access")
    access_log.handlers[:] = [access]
    access_log.propagate = False


def serve(settings: Settings, sock: socket.socket | None = None, on_ready: Callable[[], None] | None = None) -> int:
    """Serve until stopped, on ``sock`` if given (a socket bound by a supervisor) or on host:port; ``on_ready`` is
    called once the models are loaded and warmed up.

    Returns 0 after a clean stop; exits with STARTUP_FAILURE if the app cannot start.
    """
    app = create_app(settings, on_ready=on_ready)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=60,
        http=with_header_limits(settings.header_timeout_s, settings.max_header_bytes),
    )
    server = DrainingServer(config, app.state.service)
    server.run(sockets=[sock] if sock else None)  # raises SystemExit(STARTUP_FAILURE) if startup fails
    return 0
