"""Around every HTTP request: its ID, the API-key check, metrics, the access log, and a JSON 500 for an error
nothing else caught."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Unauthorized
from service.http.dependencies import ServiceState
from service.http.error_responses import error_response
from service.settings import Settings

__all__ = ["ObserveRequests", "authorized"]

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")


def authorized(settings: Settings, request: Request) -> bool:
    path = request.url.path
    if not settings.api_keys or any(
        path == p or (p != "/" and path.startswith(p + "/")) for p in settings.public_paths
    ):
        return True
    given = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    # Compare against every key, in constant time, so timing reveals neither a key nor which one matched.
    matches = [hmac.compare_digest(given.encode(), key.encode()) for key in settings.api_keys]
    return any(matches)


class ObserveRequests:
    """Around every HTTP request: its ID, the API-key check, metrics, the access log, and a JSON 500 for an error
    nothing else caught.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``) ran each request
    in a task group with memory streams, milliseconds of event-loop CPU a request. The
    latency it records (metrics and the access log's ``ms``) runs until the whole body has been handed to the
    server, so a slow reader shows as a slower request.
    """

    def __init__(self, app: ASGIApp, state: ServiceState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        request_id = request.headers.get("x-request-id", "")[:128] or uuid.uuid4().hex
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        started = time.perf_counter()
        self.state.metrics.inflight.inc()
        try:
            if authorized(self.state.settings, request):
                await self.app(scope, receive, send_with_id)
            else:
                message = "missing or wrong API key; send it as X-API-Key"
                await error_response(401, Unauthorized.code, message)(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status or 499  # the server is stopping under it; nobody reads an answer
            raise
        except Exception:
            if status:  # the answer has begun: too late for a 500; uvicorn logs it
                raise
            log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path, request_id)
            await error_response(500, "internal", "internal error; it has been logged")(scope, receive, send_with_id)
        finally:
            self.state.metrics.inflight.dec()
            self._record(request, request_id, status, time.perf_counter() - started)

    def _record(self, request: Request, request_id: str, status: int, seconds: float) -> None:
        metrics = self.state.metrics
        route = request.scope.get("route")
        path = route.path if route else "unmatched"
        metrics.requests.labels(path, str(status)).inc()
        metrics.latency.labels(path).observe(seconds)
        if path in ("/healthz", "/readyz", "/metrics"):
            return
        fields = {
            "request_id": request_id,
            "method": request.method,
            "path": request.url.path,
            "status": status,
            "ms": round(seconds * 1000, 1),
            "scale": request.query_params.get("scale"),
            **request.scope.get("state", {}).get("log", {}),
        }
        access_log.info("request", extra=fields)
