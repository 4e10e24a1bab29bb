"""WebP's encoder effort: libwebp's method, asked for per request or set for the server, with a fallback where the
fastest methods cannot encode a large image (bench/image_coding.py measures time and size per effort)."""

import io

from PIL import Image

from service.imageio import encoding
from service.imageio.decoding import Decoded
from tests.conftest import smooth_image


def _webp(effort: int) -> bytes:
    sr = smooth_image(64, 96)
    decoded = Decoded(sr, 96, 64, None, False, "PNG", None, None)
    return encoding.encode(sr, decoded, fmt="webp", quality=90, png_compress_level=1, webp_effort=effort)


def test_webp_effort_is_libwebps_method(monkeypatch):
    methods = []
    save = Image.Image.save
    monkeypatch.setattr(
        Image.Image, "save", lambda im, fp, **kw: methods.append(kw.get("method")) or save(im, fp, **kw)
    )
    for effort in (0, 4, 6):
        assert Image.open(io.BytesIO(_webp(effort))).size == (96, 64)
    assert methods == [0, 4, 6]


def test_a_fast_webp_effort_that_libwebp_cannot_manage_falls_back_to_method_2(monkeypatch):
    """libwebp's methods 0 and 1 overflow their first partition on large images (encoding error 6)."""
    save, methods = Image.Image.save, []

    def overflowing(im, fp, **kw):
        methods.append(kw.get("method"))
        if kw.get("method", 4) < 2:
            raise ValueError("encoding error 6")
        return save(im, fp, **kw)

    monkeypatch.setattr(Image.Image, "save", overflowing)
    assert Image.open(io.BytesIO(_webp(0))).size == (96, 64) and methods == [0, 2]
