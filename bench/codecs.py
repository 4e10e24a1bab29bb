"""Codec benchmark: decode and encode cost per format and setting, on a photo-like image.

    python -m bench.codecs [--size 1024] [--quick]

Writes bench/results/codecs.json. The baseline is Pillow's default PNG
encoding (compress level 6), what a naive service does.
"""

from __future__ import annotations

import argparse
import io
from contextlib import contextmanager

import numpy as np
from PIL import Image

from bench.machine import timed, write_result
from client.loadtest import make_payloads
from service import png
from service.png import encode_png


def _pillow(img: np.ndarray, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **params)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@contextmanager
def _zlib_only():
    """The service's encoder as it was before ISA-L: zlib at every level (for the same-run ratio)."""
    levels, png._ISAL_LEVELS = png._ISAL_LEVELS, range(0)
    try:
        yield
    finally:
        png._ISAL_LEVELS = levels


def _service_zlib(img: np.ndarray, level: int) -> bytes:
    with _zlib_only():
        return encode_png(img, level=level)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    size, repeat = (64, 1) if args.quick else (args.size, 5)
    img = _decode(make_payloads([size])[0].data)
    encoders = {
        "png pillow level 6 (Pillow default)": lambda: _pillow(img, "PNG"),
        "png pillow level 1": lambda: _pillow(img, "PNG", compress_level=1),
        "png service level 1, ISA-L (service default)": lambda: encode_png(img, level=1),
        "png service level 1, zlib (before ISA-L)": lambda: _service_zlib(img, 1),
        "png service level 3, ISA-L": lambda: encode_png(img, level=3),
        "png service level 6, zlib": lambda: encode_png(img, level=6),
        "jpeg quality 90": lambda: _pillow(img, "JPEG", quality=90),
        "webp quality 90": lambda: _pillow(img, "WEBP", quality=90),
        "webp quality 90 method 0": lambda: _pillow(img, "WEBP", quality=90, method=0),
    }
    mpix = size * size / 1e6
    rows = {}
    for name, fn in encoders.items():
        data = fn()
        enc = timed(fn, repeat=repeat)
        dec = timed(lambda d=data: _decode(d), repeat=repeat)
        rows[name] = {
            "encode_ms": enc * 1000,
            "decode_ms": dec * 1000,
            "bytes": len(data),
            "encode_mpix_per_s": mpix / enc,
            "decode_mpix_per_s": mpix / dec,
        }
    base = rows["png pillow level 6 (Pillow default)"]["encode_ms"]
    for row in rows.values():
        row["encode_speedup_vs_pillow_default_png"] = base / row["encode_ms"]
    for name, r in rows.items():
        print(
            f"{name:46} enc {r['encode_ms']:7.1f} ms  dec {r['decode_ms']:6.1f} ms  {r['bytes'] / 1e6:6.2f} MB  "
            f"x{r['encode_speedup_vs_pillow_default_png']:.1f}"
        )
    if not args.quick:
        print("wrote", write_result("codecs", {"image": f"{size}x{size} RGB photo-like", "formats": rows}))


if __name__ == "__main__":
    main()
