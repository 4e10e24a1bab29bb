"""Reading the image out of a request: a raw ``image/*`` body or a multipart form field ``image``.

The byte limit is enforced while the body streams in, so an oversized upload
is refused after ``max_bytes`` have arrived, not after all of it was buffered;
and the whole body must arrive within ``timeout_s``, so a client that stalls
(or sends a byte a second) is answered 408 and its connection closed instead of
holding it open.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from service.errors import BadParameter, BodyTimeout, ClientGone, TooLarge, UnsupportedImage
from service.pipeline import Upload

__all__ = ["read_upload"]

_RAW_TYPES = ("image/", "application/octet-stream")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


async def _limited(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise TooLarge(f"the body is {int(length)} bytes; this server accepts at most {max_bytes}")
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > max_bytes:
                raise TooLarge(f"the body exceeds {max_bytes} bytes, the most this server accepts")
            yield chunk
    except ClientDisconnect:  # it hung up halfway through the upload: nobody to answer, nothing went wrong here
        raise ClientGone("the client closed the connection while sending the body") from None


async def read_upload(request: Request, max_bytes: int, timeout_s: float) -> Upload:
    """The uploaded image's bytes; raises TooLarge (413), UnsupportedImage (415), BadParameter (400) or, when the
    body has not all arrived within ``timeout_s``, BodyTimeout (408)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read(request, max_bytes)
    except TimeoutError:
        raise BodyTimeout(
            f"the request body did not arrive within {timeout_s:g} s; send it faster, or a smaller image"
        ) from None


async def _read(request: Request, max_bytes: int) -> Upload:
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        return await _read_multipart(request, max_bytes)
    if content_type and not content_type.startswith(_RAW_TYPES):
        raise UnsupportedImage(
            f"Content-Type {content_type.split(';')[0]!r} is not an image; send the image bytes "
            "with an image/* Content-Type, or a multipart form with an 'image' field"
        )
    body = bytearray()
    async for chunk in _limited(request, max_bytes):
        body += chunk
    return Upload(bytes(body), None)


async def _read_multipart(request: Request, max_bytes: int) -> Upload:
    parser = MultiPartParser(request.headers, _limited(request, max_bytes), max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadParameter(f"the multipart body could not be parsed: {exc.message}") from None
    try:
        field = form.get("image")
        if not isinstance(field, UploadFile):
            raise BadParameter("the multipart form has no file field named 'image'")
        data = await field.read()
        name = _SAFE.sub("_", field.filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]) if field.filename else None
        return Upload(data, name or None)
    finally:
        await form.close()
