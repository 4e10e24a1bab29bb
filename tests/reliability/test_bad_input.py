"""The bad-input suite: hostile, broken and odd inputs, all made here in code.

Each case is answered with a 4xx and the JSON error body (no trace, no path), or, where the input is valid
after all, with a correct image of the right size. Afterwards the server is healthy, its memory bounded, and
its log holds no unhandled exception.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import encode_image, smooth_image

from .helpers import assert_clean_log, assert_json_error, rss_mb

IMAGE = "image"  # the expected answer is a 200 with a correct image
RSS_LIMIT_MB = 1024  # the server's resident memory after the whole suite, bombs included


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, depth: int = 8, color: int = 2, idat: bytes | None = None, extra=b"") -> bytes:
    """A PNG made chunk by chunk: IHDR claims anything, IDAT holds whatever we give it."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def picture(h: int = 24, w: int = 32, seed: int = 0) -> Image.Image:
    return Image.fromarray(smooth_image(h, w, seed=seed))


def png(h: int = 24, w: int = 32, **params) -> bytes:
    return encode_image(picture(h, w), "PNG", **params)


def jpeg(h: int = 24, w: int = 32, **params) -> bytes:
    return encode_image(picture(h, w), "JPEG", **params)


def with_app1(data: bytes, payload: bytes) -> bytes:
    """A JPEG with an extra APP1 (EXIF) segment right after SOI."""
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(exif=exif.tobytes())


def cut(data: bytes, at: int | float) -> bytes:
    return data[: int(len(data) * at) if isinstance(at, float) else at]


def frames(n: int = 3) -> list[Image.Image]:
    return [picture(16, 16, seed=i) for i in range(n)]


def animated(fmt: str) -> bytes:
    first, *rest = frames()
    return encode_image(first, fmt, save_all=True, append_images=rest)


def zlib_bomb_in_limit() -> bytes:
    """512 x 512 grayscale (within the limits) whose IDAT inflates to 64 MiB more than the image needs."""
    comp = zlib.compressobj(9)
    data = comp.compress(b"\0" * (513 * 512)) + comp.compress(b"\0" * (64 << 20)) + comp.flush()
    return raw_png(512, 512, 8, 0, idat=data)


def zlib_bomb_over_limit() -> bytes:
    """5000 x 5000 grayscale, all of it really there: 25 MB of pixels in ~25 kB (the limit is 1 MP)."""
    return raw_png(5000, 5000, 8, 0, idat=zlib.compress(b"\0" * (5001 * 5000), 9))


def text_bomb(kind: bytes) -> bytes:
    """A tiny PNG with a zTXt/iCCP chunk that inflates to 64 MiB (Pillow caps text chunks)."""
    payload = (b"Comment\0\0" if kind == b"zTXt" else b"icc\0\0") + zlib.compress(b"A" * (64 << 20), 9)
    return raw_png(4, 4, 8, 0, idat=zlib.compress(b"\0" * 20), extra=chunk(kind, payload))


def bad_crc() -> bytes:
    data = bytearray(png())
    data[29] ^= 0xFF  # inside IHDR's CRC
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode_image(Image.new("RGB", (4, 4)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    screen = struct.pack("<HH", width, height) + b"\0\0\0"
    return b"GIF89a" + screen + b",\0\0\0\0" + struct.pack("<HH", width, height) + b"\0\x02\x02\x44\x01\0;"


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png16(color: bool) -> bytes:
    if not color:
        return encode_image(Image.fromarray(smooth_image(24, 32, 1)[:, :, 0].astype(np.uint16) * 257))
    pixels = smooth_image(24, 32).astype(">u2") * 257
    rows = b"".join(b"\0" + pixels[y].tobytes() for y in range(24))
    return raw_png(32, 24, 16, 2, idat=zlib.compress(rows))


def palette_with_transparency() -> bytes:
    im = picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode_image(im, "PNG", transparency=0)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    """A multipart/form-data body of (field name, file name or None, content) parts."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += b"Content-Type: image/png\r\n" if filename else b""
        out += b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = "multipart/form-data; boundary=b0undary"


@dataclass
class Case:
    id: str
    body: Callable[[], bytes]
    expect: int | str  # an error status, or IMAGE
    code: str | None = None  # the error code expected
    content_type: str | bytes | None = "image/png"
    params: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    size: tuple[int, int] = (32, 24)  # input (width, height) when the answer is an image
    mode: str | None = None  # the output's Pillow mode, where it matters
    scales: tuple[float, ...] = (2,)  # acceptable scales of the output
    either: bool = False  # valid to refuse (4xx JSON) or to answer with a correct image


def e415(id, body, **kw):
    return Case(id, body, 415, "unsupported_image", **kw)


def e413(id, body, **kw):
    return Case(id, body, 413, "too_large", **kw)


def e422(id, params):
    return Case(id, png, 422, "validation_error", params=params)


def ok(id, body, **kw):
    return Case(id, body, IMAGE, **kw)


RANDOM = np.random.default_rng(7)
NOISE_1K, NOISE_256K = RANDOM.bytes(1024), RANDOM.bytes(256 * 1024)

CASES = [
    # --- not images at all
    e415("empty-body", lambda: b""),
    e415("empty-body-no-content-type", lambda: b"", content_type=None),
    e415("random-1k", lambda: NOISE_1K),
    e415("random-256k", lambda: NOISE_256K),
    e415("text-as-png", lambda: b"hello, I am text, not a picture"),
    e415("text-as-jpeg", lambda: b"hello, I am text" * 100, content_type="image/jpeg"),
    e415("html-as-webp", lambda: b"<html><body>hi</body></html>", content_type="image/webp"),
    e415(
        "svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', content_type="image/svg+xml"
    ),
    e415("pdf-as-octet-stream", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", content_type="application/octet-stream"),
    e415("png-with-json-content-type", png, content_type="application/json"),
    e415("png-with-text-content-type", png, content_type="text/plain"),
    e415("png-with-undecodable-content-type", png, content_type=b"\xff\xfe"),
    # --- truncated
    *[e415(f"png-truncated-at-{at}", lambda at=at: cut(png(64, 64), at)) for at in (8, 16, 33, 60, 0.5, 0.9)],
    *[e415(f"jpeg-truncated-at-{at}", lambda at=at: cut(jpeg(64, 64), at)) for at in (2, 20, 200, 0.5, 0.9)],
    e415("jpeg-without-eoi", lambda: jpeg(64, 64)[:-2], content_type="image/jpeg"),
    e415("webp-truncated", lambda: encode_image(picture(64, 64), "WEBP")[:100], content_type="image/webp"),
    ok("png-without-iend", lambda: png(24, 32)[:-12]),
    # --- sizes: absurd, zero, bombs
    e413("png-header-100000x100000", lambda: raw_png(100_000, 100_000)),
    e413("bmp-header-60000x60000", lambda: bmp_claiming(60_000, 60_000), content_type="image/bmp"),
    e413("gif-header-65535x65535", lambda: gif_claiming(65535, 65535), content_type="image/gif"),
    e413("jpeg-header-65000x65000", lambda: jpeg_claiming(65000, 65000), content_type="image/jpeg"),
    e413("zlib-bomb-over-the-pixel-limit", zlib_bomb_over_limit),
    ok("zlib-bomb-within-the-pixel-limit", zlib_bomb_in_limit, size=(512, 512), mode="L"),
    e415("ztxt-bomb", lambda: text_bomb(b"zTXt")),
    e415("iccp-bomb", lambda: text_bomb(b"iCCP")),
    e415("png-0x0", lambda: raw_png(0, 0)),
    e415("png-0x10", lambda: raw_png(0, 10)),
    e415("bmp-0x0", lambda: bmp_claiming(0, 0), content_type="image/bmp"),
    ok("png-1x1", lambda: png(1, 1), size=(1, 1)),
    ok("jpeg-1x1", lambda: jpeg(1, 1), size=(1, 1), content_type="image/jpeg"),
    ok("gif-1x1", lambda: encode_image(Image.new("P", (1, 1)), "GIF"), size=(1, 1)),
    ok("png-1x300", lambda: png(300, 1), size=(1, 300)),
    # --- corrupt structure
    e415("png-bad-crc", bad_crc),
    e415("png-idat-not-zlib", lambda: raw_png(4, 4, idat=b"this is not zlib data")),
    e415("png-bit-depth-3", lambda: raw_png(4, 4, depth=3)),
    # --- animation and pages
    e415("animated-gif", lambda: animated("GIF"), content_type="image/gif"),
    e415("apng", lambda: animated("PNG")),
    e415("animated-webp", lambda: animated("WEBP"), content_type="image/webp"),
    e415("multi-page-tiff", lambda: animated("TIFF"), content_type="image/tiff"),
    # --- valid but unusual pixel formats
    ok("cmyk-jpeg", lambda: encode_image(picture().convert("CMYK"), "JPEG"), mode="RGB", content_type="image/jpeg"),
    ok("png-16-bit-gray", lambda: png16(color=False), mode="I;16"),
    ok("png-16-bit-rgb", lambda: png16(color=True), mode="RGB"),
    ok("png-palette-with-transparency", palette_with_transparency, mode="RGBA"),
    ok("png-gray-alpha", lambda: encode_image(picture().convert("LA")), mode="LA"),
    ok("png-1-bit", lambda: encode_image(picture().convert("1")), mode="L"),
    ok("png-optimized", lambda: png(optimize=True)),
    ok("jpeg-progressive", lambda: jpeg(progressive=True), content_type="image/jpeg"),
    ok("jpeg-gray", lambda: encode_image(picture().convert("L"), "JPEG"), mode="L", content_type="image/jpeg"),
    ok("bmp", lambda: encode_image(picture(), "BMP"), content_type="image/bmp"),
    ok("tiff", lambda: encode_image(picture(), "TIFF"), content_type="image/tiff"),
    ok("webp", lambda: encode_image(picture(), "WEBP"), content_type="image/webp"),
    e415("tga-not-in-the-allowed-formats", lambda: encode_image(picture(), "TGA"), content_type="image/x-tga"),
    # --- EXIF
    ok(
        "jpeg-exif-garbage",
        lambda: with_app1(jpeg(), b"Exif\0\0" + b"\xde\xad\xbe\xef" * 10),
        content_type="image/jpeg",
    ),
    ok("jpeg-exif-ifd-offset-out-of-range", lambda: with_app1(jpeg(), b"Exif\0\0MM\0*\xff\xff\xff\x00")),
    ok("jpeg-exif-orientation-9", lambda: exif_jpeg(9), content_type="image/jpeg"),
    ok("jpeg-exif-orientation-6-rotates", lambda: exif_jpeg(6), size=(24, 32), content_type="image/jpeg"),
    ok("png-exif-chunk-garbage", lambda: png()[:33] + chunk(b"eXIf", b"garbage" * 3) + png()[33:]),
    # --- content types that do not match the bytes
    ok("jpeg-sent-as-png", jpeg),
    ok("png-as-octet-stream", png, content_type="application/octet-stream"),
    ok("png-without-content-type", png, content_type=None),
    # --- multipart
    Case(
        "multipart-without-image-field",
        lambda: multipart([("picture", "a.png", png())]),
        400,
        "bad_parameter",
        content_type=MULTIPART,
    ),
    Case(
        "multipart-image-as-text-field",
        lambda: multipart([("image", None, b"not a file")]),
        400,
        "bad_parameter",
        content_type=MULTIPART,
    ),
    Case(
        "multipart-two-files",
        lambda: multipart([("image", "a.png", png()), ("other", "b.png", png())]),
        400,
        "bad_parameter",
        content_type=MULTIPART,
    ),
    Case("multipart-without-boundary", png, 400, "bad_parameter", content_type="multipart/form-data"),
    Case("multipart-garbage", lambda: NOISE_1K, 400, "bad_parameter", content_type=MULTIPART),
    e415("multipart-empty-image", lambda: multipart([("image", "a.png", b"")]), content_type=MULTIPART),
    ok(
        "multipart-path-in-filename",
        lambda: multipart([("image", "../../etc/passwd.png", png())]),
        content_type=MULTIPART,
    ),
    # --- query values
    *[e422(f"scale={v}", {"scale": v}) for v in (7, 1, 0, -1, 4.01, "two", "nan", "inf", "1" + "0" * 40)],
    *[e422(f"width={v}", {"width": v}) for v in (0, -5, 65536, "wide", "1" + "0" * 40)],
    e422("fit-unknown", {"width": 30, "height": 30, "fit": "stretch"}),
    Case("scale-and-width", png, 400, "bad_parameter", params={"scale": 2, "width": 40}),
    Case("width-smaller-than-the-image", png, 400, "bad_parameter", params={"width": 5}),
    Case("height-past-x4", png, 400, "bad_parameter", params={"height": 10_000}),
    ok("scale-2.5", png, params={"scale": "2.5"}, scales=(2.5,)),
    *[e422(f"format={v}", {"format": v}) for v in ("gif", "PNG", "")],
    *[e422(f"quality={v}", {"quality": v}) for v in (0, 101, "high")],
    e422("model-too-long", {"model": "m" * 65}),
    Case("model-unknown", png, 400, "bad_parameter", params={"model": "nope"}),
    Case("model-path", png, 400, "bad_parameter", params={"model": "../../etc/passwd"}),
    ok("unknown-query-parameter", png, params={"foo": "bar", "x" * 100: "y" * 1000}),
    ok("scale-twice", png, params=[("scale", "2"), ("scale", "3")], scales=(2, 3)),
    ok("format-webp-quality-1", png, params={"format": "webp", "quality": 1}),
    ok("scale-4-jpeg", png, params={"scale": 4, "format": "jpeg"}, scales=(4,)),
    # --- headers
    ok("header-64-kib", png, headers={"X-Padding": "a" * 65536}),
    ok("header-1-mib", png, headers={"X-Padding": "a" * 2**20}, either=True),
    ok("thousand-headers", png, headers={f"X-H{i}": "v" * 40 for i in range(1000)}),
    ok("request-id-5000-chars", png, headers={"X-Request-ID": "r" * 5000}),
    ok("content-type-with-long-parameter", png, content_type="image/png; name=" + "n" * 10000),
]


STATUSES: Counter = Counter()


def send(client: httpx.Client, case: Case) -> httpx.Response:
    headers = dict(case.headers)
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    return client.post("/v1/upscale", content=case.body(), headers=headers, params=case.params)


def check_image(r: httpx.Response, case: Case) -> None:
    assert r.status_code == 200, f"{r.status_code}: {r.text[:300]}"
    assert r.headers["content-type"].startswith("image/")
    with warnings.catch_warnings():  # the server carries a corrupt EXIF block through as it came
        warnings.simplefilter("ignore")
        out = Image.open(io.BytesIO(r.content))
        out.load()
    w, h = case.size
    assert out.size in [(round(w * s), round(h * s)) for s in case.scales], (out.size, case.size, case.scales)
    if case.mode:
        assert out.mode == case.mode
    assert len(r.headers["x-request-id"]) <= 128
    assert "/" not in r.headers.get("content-disposition", "").partition("filename=")[2]


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(rclient, case: Case):
    r = send(rclient, case)
    STATUSES[r.status_code] += 1
    if r.status_code >= 500:
        pytest.fail(f"{r.status_code}: {r.text[:300]}")
    if case.either and r.status_code != 200:
        assert 400 <= r.status_code < 500
        return
    if case.expect == IMAGE:
        check_image(r, case)
    else:
        assert_json_error(r, case.expect, case.code)


def test_server_stayed_healthy_and_logged_no_unhandled_error(rserver, rclient, figures):
    assert rclient.get("/healthz").status_code == 200
    assert rclient.get("/readyz").status_code == 200
    rss = rss_mb(rserver)
    figures["bad_input"] = {
        "cases": len(CASES),
        "answered": sum(STATUSES.values()),
        "statuses": {str(k): v for k, v in sorted(STATUSES.items())},
        "5xx": sum(v for k, v in STATUSES.items() if k >= 500),
        "server_rss_mb_after": round(rss, 1),
    }
    assert sum(v for k, v in STATUSES.items() if k >= 500) == 0
    assert rss < RSS_LIMIT_MB
    assert_clean_log(rserver)


def test_exif_too_long_for_jpeg_output_is_dropped_not_a_500(rserver):
    """A PNG with a 70 kB eXIf chunk asked for as JPEG: the EXIF is dropped (JPEG holds at most 64 KiB)."""
    exif = b"MM\0*\0\0\0\x08\0\0" + b"\0" * 70_000
    body = png()[:33] + chunk(b"eXIf", exif) + png()[33:]
    r = httpx.post(f"{rserver.url}/v1/upscale", content=body, params={"format": "jpeg"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert_clean_log(rserver)
