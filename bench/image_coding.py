"""Codec benchmark: decode and encode cost per format and setting, on a photo-like image.

    python -m bench.image_coding [--size 1024] [--data ../shared/datasets/Set5] [--quick]

Writes bench/results/codecs.json. The baseline is Pillow's default PNG
encoding (compress level 6), what a naive service does. A second table
compares the deflaters of the default PNG level on what the service really
encodes, images upscaled x2 (bicubic here): the run-length deflater
(service/imageio/csrc/rle_deflate.c) against ISA-L's level 1, time and size, on the
benchmarks' photo-like image, on drawn graphics (boxes and labels) and on each
image of ``--data`` if it exists. A third compares the service's decoding of PNG
requests with its plain-PNG reader (service/imageio/png_reader.py) and with Pillow alone.
The last two time the lossy encoders' effort knobs on an 8000 x 6000 result: WebP's
method, and AVIF's speed against WebP (effort 2) and JPEG measured in the same run,
each with its size and its PSNR against the image encoded.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np
from PIL import Image, ImageDraw

from bench.machine import RESULTS, timed, write_result
from client.loadtest import make_payloads
from service.imageio import decoding, png_reader, png_writer, rle_deflate
from service.imageio.decoding import Decoded
from service.imageio.encoding import encode
from service.imageio.png_writer import encode_png

SET5 = RESULTS.parent.parent.parent / "shared" / "datasets" / "Set5"


def _pillow(img: np.ndarray, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **params)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _service_zlib(img: np.ndarray, level: int) -> bytes:
    """The service's encoder as it was before ISA-L: zlib at every level (for the same-run ratio)."""
    with patch.object(png_writer, "_ISAL_LEVELS", range(0)), _isal_at_level_1():
        return encode_png(img, level=level)


def _isal_at_level_1():
    """The service's encoder as it was before the run-length deflater: ISA-L at level 1."""
    return patch.object(rle_deflate, "unavailable", lambda: "benchmark baseline")


def _service_isal(img: np.ndarray) -> bytes:
    with _isal_at_level_1():
        return encode_png(img, level=1)


def _run_length_alone(img: np.ndarray) -> bytes:
    """Level 1 without ISA-L's second try on very compressible parts."""
    with patch.object(rle_deflate, "ISAL_RECHECK_BITS_PER_BYTE", 0):
        return encode_png(img, level=1)


def deflaters_on_upscaled(images: dict[str, np.ndarray], repeat: int) -> dict[str, dict[str, float]]:
    """Run-length deflater vs ISA-L level 1 (the default PNG level before and after) on x2 upscaled images."""
    rows = {}
    for name, img in images.items():
        h, w = img.shape[:2]
        up = np.asarray(Image.fromarray(img).resize((2 * w, 2 * h), Image.Resampling.BICUBIC))
        ours, isal, alone = encode_png(up, level=1), _service_isal(up), _run_length_alone(up)
        assert np.array_equal(_decode(ours), up)
        t_ours = timed(lambda u=up: encode_png(u, level=1), repeat=repeat)
        t_isal = timed(lambda u=up: _service_isal(u), repeat=repeat)
        rows[f"{name} x2 ({2 * w}x{2 * h})"] = {
            "run_length_ms": t_ours * 1000,
            "isal_level_1_ms": t_isal * 1000,
            "run_length_bytes": len(ours),
            "isal_level_1_bytes": len(isal),
            "run_length_alone_bytes": len(alone),  # without ISA-L's second try on very compressible parts
            "speedup": t_isal / t_ours,
            "size_ratio": len(ours) / len(isal),
        }
    return rows


def _graphics(size: int) -> np.ndarray:
    """Flat boxes with labels: what a run-length deflater compresses worse than ISA-L's matches."""
    picture = Image.new("RGB", (size, size), (240, 240, 235))
    draw = ImageDraw.Draw(picture)
    rng = np.random.default_rng(0)
    for k in range(max(1, size // 12)):
        x, y = (int(v) for v in rng.integers(0, size, 2))  # Pillow clips what falls outside
        draw.rectangle([x, y, x + 50, y + 30], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw.text((x, y + 34), f"label {k}", fill=(0, 0, 0))
    return np.asarray(picture)


def _data_pngs(data: Path | None) -> dict[str, bytes]:
    """The PNG files of ``--data`` by name, if it is there."""
    return {path.stem: path.read_bytes() for path in sorted(data.glob("*.png"))} if data and data.is_dir() else {}


def _upscaling_inputs(size: int, data: Path | None) -> dict[str, np.ndarray]:
    images = {"photo-like": _decode(make_payloads([size])[0].data), "graphics": _graphics(size)}
    return images | {name: _decode(png) for name, png in _data_pngs(data).items()}


def png_decoding(files: dict[str, bytes], repeat: int) -> dict[str, dict[str, float]]:
    """The service's decoding of PNG requests (``service.imageio.decoding.decode``) with the plain-PNG reader and, the
    baseline, with the reader turned off so that Pillow reads every file."""
    rows = {}
    for name, data in files.items():

        def decode(data=data):
            return decoding.decode(data, decoding.Limits(max_input_pixels=1 << 30, max_output_pixels=1 << 32))

        reader = timed(decode, repeat=repeat)
        with patch.object(png_reader, "parse", lambda data: None):
            pillow = timed(decode, repeat=repeat)
        rows[name] = {
            "read_by_the_reader": png_reader.parse(data) is not None,
            "reader_ms": reader * 1000,
            "pillow_ms": pillow * 1000,
            "speedup": pillow / reader,
        }
    return rows


def _png_requests(img: np.ndarray, data: Path | None) -> dict[str, bytes]:
    h, w = img.shape[:2]
    return {
        "bench.serving's request (512x512, Pillow level 6)": make_payloads([512])[0].data,
        f"photo-like {w}x{h}, Pillow level 6": _pillow(img, "PNG"),
        f"photo-like {w}x{h}, the service's own PNG (level 1)": encode_png(img, level=1),
    } | _data_pngs(data)


def webp_effort(size: tuple[int, int], repeat: int) -> dict[str, dict[str, float]]:
    """WebP at each effort (libwebp's method) on a bicubic x4 of a photo-like image, through the service's encoder
    (which falls back to method 2 where 0 and 1 overflow on large images): time and size against method 4, Pillow's
    default."""
    w, h = size
    sr = _x4_photo(size)
    decoded = Decoded(sr, w, h, None, False, "PNG", None, None)
    rows = {}
    for effort in range(7):

        def run(e: int = effort) -> bytes:
            return encode(sr, decoded, fmt="webp", quality=90, png_compress_level=1, webp_effort=e)

        rows[f"effort {effort}"] = {"encode_ms": timed(run, repeat=repeat) * 1000, "bytes": len(run())}
    base = rows["effort 4"]
    for row in rows.values():
        row["speedup_vs_effort_4"] = base["encode_ms"] / row["encode_ms"]
        row["size_vs_effort_4"] = row["bytes"] / base["bytes"]
    return rows


def _x4_photo(size: tuple[int, int]) -> np.ndarray:
    """A bicubic x4 of a photo-like image: what an upscaled photo looks like to an encoder."""
    w, h = size
    photo = Image.fromarray(_decode(make_payloads([max(w, h) // 4])[0].data)).crop((0, 0, w // 4, h // 4))
    return np.asarray(photo.resize((w, h), Image.Resampling.BICUBIC))


def avif_speed(size: tuple[int, int], quality: int = 90) -> dict[str, dict[str, float]]:
    """AVIF at each speed (libavif's, through the service's encoder) with WebP at effort 2 and JPEG as peers, all at
    ``quality``: encode time, bytes, and PSNR against the image (RGB, all channels)."""
    sr = _x4_photo(size)
    decoded = Decoded(sr, *size, None, False, "PNG", None, None)
    runs = {f"avif speed {speed}": ("avif", {"avif_speed": speed}) for speed in (4, 5, 6, 7, 8, 9, 10)}
    runs |= {"webp effort 2": ("webp", {"webp_effort": 2}), "jpeg": ("jpeg", {})}
    # AVIF's quality scale is not JPEG's or WebP's: at 70 it lands near their PSNR at 90, for bytes at equal quality.
    runs |= {"avif speed 9, quality 70": ("avif", {"avif_speed": 9, "quality": 70})}
    rows = {}
    for name, (fmt, knob) in runs.items():
        t0 = time.perf_counter()
        data = encode(sr, decoded, fmt=fmt, png_compress_level=1, **{"quality": quality, **knob})
        seconds = time.perf_counter() - t0
        mse = np.mean((_decode(data).astype(np.float64) - sr) ** 2)
        rows[name] = {"encode_ms": seconds * 1000, "bytes": len(data), "psnr_db": float(10 * np.log10(255**2 / mse))}
        print(f"{name:26} {seconds:7.2f} s {len(data) / 1e6:7.2f} MB  {rows[name]['psnr_db']:.2f} dB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--data", type=Path, default=SET5, help="images to upscale for the deflater table, if present")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    size, repeat = (64, 1) if args.quick else (args.size, 5)
    img = _decode(make_payloads([size])[0].data)
    encoders = {
        "png pillow level 6 (Pillow default)": lambda: _pillow(img, "PNG"),
        "png pillow level 1": lambda: _pillow(img, "PNG", compress_level=1),
        "png service level 1, run-length deflater (service default)": lambda: encode_png(img, level=1),
        "png service level 1, ISA-L (before the run-length deflater)": lambda: _service_isal(img),
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
    upscaled = deflaters_on_upscaled(_upscaling_inputs(size // 2, None if args.quick else args.data), repeat)
    for name, r in upscaled.items():
        print(
            f"{name:34} run-length {r['run_length_ms']:5.1f} ms {r['run_length_bytes'] / 1e6:5.2f} MB  "
            f"ISA-L 1 {r['isal_level_1_ms']:5.1f} ms {r['isal_level_1_bytes'] / 1e6:5.2f} MB  "
            f"x{r['speedup']:.2f} faster, size x{r['size_ratio']:.3f}"
        )
    decoding = png_decoding(_png_requests(img, None if args.quick else args.data), repeat)
    for name, r in decoding.items():
        print(
            f"{name:50} decode: reader {r['reader_ms']:5.1f} ms  Pillow {r['pillow_ms']:5.1f} ms  x{r['speedup']:.2f}"
        )
    webp = webp_effort((256, 192) if args.quick else (8000, 6000), 1)  # seconds each at the larger efforts
    for name, r in webp.items():
        print(
            f"webp {name}: {r['encode_ms']:8.1f} ms {r['bytes'] / 1e6:6.2f} MB  x{r['speedup_vs_effort_4']:.2f} "
            f"faster than effort 4, size x{r['size_vs_effort_4']:.3f}"
        )
    avif = avif_speed((256, 192) if args.quick else (8000, 6000))
    if not args.quick:
        result = {
            "image": f"{size}x{size} RGB photo-like",
            "formats": rows,
            "png_level_1_on_upscaled": upscaled,
            "png_decoding": decoding,
            "webp_effort_8000x6000": webp,
            "avif_speed_8000x6000_quality_90": avif,
        }
        print("wrote", write_result("codecs", result))


if __name__ == "__main__":
    main()
