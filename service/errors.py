"""Every error the service answers with, in one place.

Each error has a stable machine-readable ``code`` and the HTTP status it maps
to; the app renders them as ``{"error": {"code": ..., "message": ...}}``.
Messages name the problem and what to do; they never carry stack traces or
server paths.

    UpscalerError                 500 internal
    ├── BadParameter              400 bad_parameter      (a value the schema allows but we cannot serve)
    ├── Unauthorized              401 unauthorized
    ├── BodyTimeout               408 body_timeout       (the body did not arrive within its deadline)
    ├── TooLarge                  413 too_large          (body bytes, input or output pixels, the output format's limit)
    ├── UnsupportedImage          415 unsupported_image  (not decodable, not an allowed format, animated, ...)
    ├── TooCostly                 422 too_costly         (decoding overran its time budget)
    ├── ClientGone                499 client_closed      (the client went away; nobody reads the answer)
    ├── Overloaded                503 overloaded         (queue full; Retry-After)
    ├── NotReady                  503 not_ready          (starting or draining; Retry-After)
    └── DeadlineExceeded          504 deadline_exceeded  (waited longer than the request timeout)

Two more are answered by the HTTP protocol itself, before a request reaches the app (``service.http.server``): 408
header_timeout and 431 headers_too_large, in the same JSON form.
"""

from __future__ import annotations

__all__ = [
    "UpscalerError",
    "BadParameter",
    "Unauthorized",
    "BodyTimeout",
    "TooLarge",
    "TooCostly",
    "ClientGone",
    "UnsupportedImage",
    "Overloaded",
    "NotReady",
    "DeadlineExceeded",
]


class UpscalerError(Exception):
    status = 500
    code = "internal"
    retry_after: int | None = None
    close_connection = False  # the rest of the request cannot be trusted: answer, then close

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadParameter(UpscalerError):
    status, code = 400, "bad_parameter"


class Unauthorized(UpscalerError):
    status, code = 401, "unauthorized"


class BodyTimeout(UpscalerError):
    status, code, close_connection = 408, "body_timeout", True


class TooLarge(UpscalerError):
    status, code = 413, "too_large"


class ClientGone(UpscalerError):
    status, code = 499, "client_closed"


class UnsupportedImage(UpscalerError):
    status, code = 415, "unsupported_image"


class TooCostly(UpscalerError):
    status, code = 422, "too_costly"


class Overloaded(UpscalerError):
    status, code, retry_after = 503, "overloaded", 1


class NotReady(UpscalerError):
    status, code, retry_after = 503, "not_ready", 2


class DeadlineExceeded(UpscalerError):
    status, code = 504, "deadline_exceeded"
