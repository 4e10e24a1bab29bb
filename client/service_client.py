"""Sending one image to the upscaling service: balancing over replicas and retrying what is worth retrying.

An upscale is idempotent (the same bytes and parameters give the same image, and nothing is stored), so a request
whose fate is unknown may be sent again. Retried, with exponential backoff and jitter, at most ``retries`` times:
the transport failures of ``RETRYABLE_ERRORS`` (connection refused or reset, the server or a balancer closing the
connection before a whole answer, timeouts) and the answers 429 (from a rate-limiting proxy), 502, 503 and 504;
the replica also rests (for its ``Retry-After`` when the answer has one, see ``client.balancer``).
Final for the file: any other answer, such as 400, 413, 415 or 422, and the transport errors that would only
happen again (an unsupported URL scheme, a request httpx itself refuses to send). A 401 or 403 raises
``Unauthorized``, since no other file would fare better.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from PIL import Image

from client.balancer import Balancer

__all__ = ["RETRYABLE_ERRORS", "RETRYABLE_STATUS", "ServiceClient", "Unauthorized", "UpscaleFailed", "Upscaled"]

log = logging.getLogger("client.service_client")

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# Connection refused (ConnectError), reset or closed early (ReadError, WriteError, RemoteProtocolError), timeouts
# (connect, read, write, waiting for a pooled connection). Not: UnsupportedProtocol, LocalProtocolError, ProxyError,
# DecodingError, TooManyRedirects, which the same request would meet again.
RETRYABLE_ERRORS: tuple[type[httpx.RequestError], ...] = (
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.TimeoutException,
)
MAX_BACKOFF = 10.0  # seconds; the longest wait between two attempts at one file
MAX_RETRY_AFTER = 120.0  # seconds; a longer Retry-After is cut to this


@dataclass(frozen=True)
class Upscaled:
    body: bytes
    width: int
    height: int
    attempts: int
    model: str | None = None  # the model that ran, as the server names it (X-Model)


class UpscaleFailed(Exception):
    """The service did not upscale the file: a final answer, or every attempt failed."""

    def __init__(self, reason: str, *, attempts: int, status: int | None = None, code: str | None = None):
        super().__init__(reason)
        self.reason, self.attempts, self.status, self.code = reason, attempts, status, code


class Unauthorized(UpscaleFailed):
    """The service refused the API key (401/403)."""


class ServiceClient:
    """Upscales images through ``http`` on the replicas of ``balancer``.

    ``params`` are the query parameters common to every request (scale, model, quality);
    ``retries`` is how many times one file is tried again; ``backoff`` is the first wait, doubled
    for each further retry up to ``MAX_BACKOFF``, of which a random half is taken off (jitter).
    """

    def __init__(
        self, http: httpx.AsyncClient, balancer: Balancer, *, params: dict[str, str], retries: int, backoff: float
    ):
        self._http, self._balancer = http, balancer
        self._params, self._retries, self._backoff = params, retries, backoff
        self.retried = 0  # attempts after the first, over all files
        self.errors: Counter[str] = Counter()  # failed attempts by cause ("503", "ConnectError"), over all files

    async def upscale(self, data: bytes, media_type: str, fmt: str) -> Upscaled:
        """The upscaled image in format ``fmt``; raises UpscaleFailed (or Unauthorized)."""
        params = {**self._params, "format": fmt}
        headers = {"Content-Type": media_type}
        attempt = 0
        while True:
            attempt += 1
            lease = await self._balancer.acquire()
            try:
                url = f"{lease.url}/v1/upscale"
                response = await self._http.post(url, content=data, params=params, headers=headers)
            except httpx.RequestError as exc:
                self._balancer.release(lease, failed=True)
                self.errors[type(exc).__name__] += 1
                status, code, problem = None, None, f"{type(exc).__name__} from {lease.url}: {exc}".rstrip(": ")
                if not isinstance(exc, RETRYABLE_ERRORS):
                    raise UpscaleFailed(problem, attempts=attempt) from exc
            else:
                status = response.status_code
                retryable = status in RETRYABLE_STATUS
                self._balancer.release(lease, failed=retryable, retry_after=_retry_after(response))
                if status == 200:
                    return _upscaled(response, attempt)
                self.errors[str(status)] += 1
                code, message = _error_of(response)
                problem = f"{status} {code or response.reason_phrase}: {message}"
                if status in (401, 403):
                    raise Unauthorized(problem, attempts=attempt, status=status, code=code)
                if not retryable:
                    raise UpscaleFailed(problem, attempts=attempt, status=status, code=code)
            if attempt > self._retries:
                raise UpscaleFailed(
                    f"gave up after {attempt} attempts; the last: {problem}", attempts=attempt, status=status, code=code
                )
            delay = min(MAX_BACKOFF, self._backoff * 2 ** min(attempt - 1, 30))
            delay -= random.uniform(0, delay / 2)
            log.debug("attempt %d failed (%s); retrying in %.2f s", attempt, problem, delay)
            self.retried += 1
            await asyncio.sleep(delay)


def _upscaled(response: httpx.Response, attempts: int) -> Upscaled:
    try:
        with Image.open(io.BytesIO(response.content)) as im:
            width, height = im.size
    except Exception:  # Pillow raises many types on data it cannot read
        raise UpscaleFailed(
            f"the server answered 200 with {response.headers.get('content-type')!r} that is no image",
            attempts=attempts,
            status=200,
        ) from None
    return Upscaled(response.content, width, height, attempts, response.headers.get("x-model"))


def _error_of(response: httpx.Response) -> tuple[str | None, str]:
    """The service's ``{"error": {"code", "message"}}``, or the start of whatever else came back."""
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return None, response.text[:200].strip() or "(no body)"


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (it may be a number or an HTTP date), at most MAX_RETRY_AFTER."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
