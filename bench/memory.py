"""Memory benchmark: peak RSS growth of the service while it upscales one large image.

    python -m bench.memory [--size 4096] [--scales 2,4] [--quick]

For each scale a fresh service is started; its idle RSS is read once it is
ready, one size x size PNG is upscaled (PNG out), and the process's peak RSS
(VmHWM) is compared with the raw bytes of input plus output. Then what stays
resident after ordinary traffic: a fresh service serves a closed loop of 64
512x512 x2 requests at concurrency 8, and its RSS afterwards is compared with
its idle RSS and with the raw bytes of the 8 requests in flight (malloc keeps
freed request buffers under 4 MiB for reuse, ``service/host.py``). Last, the
refused bombs: one fresh service (with the default limits, ICO allowed) takes
each of ``bench.hostile``'s worst files in turn, and its peak RSS over idle is
recorded with the answer's status and time. Linux only.
Writes bench/results/memory.json.

``--sixteen-bit`` measures the 16-bit path instead: a fresh service takes two valid size² 16-bit RGBA PNGs at x2
at once (PNG out, 16 bits), and its peak RSS over idle is compared with the raw bytes of both inputs and outputs.
Writes bench/results/memory-16-bit.json.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench import hostile
from bench.machine import write_result
from bench.serving import free_port, running
from client.loadtest import LoadOptions, closed_loop, make_payloads


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _big_png(size: int) -> bytes:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([np.sin(7 * xx + c) * np.cos(6 * yy - c) for c in range(3)], -1) * 0.45 + 0.5
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _service(url: str, port: int, max_body_bytes: int = 2**20, **settings: str):
    env = {"UPSCALER_PORT": str(port), "UPSCALER_MAX_BODY_BYTES": str(max_body_bytes), "UPSCALER_LOG_LEVEL": "warning"}
    env |= {f"UPSCALER_{k.upper()}": v for k, v in settings.items()}
    return running([sys.executable, "-m", "service"], env, url)


BOMBS = {
    "ICO with a 16000² PNG frame (ICO allowed)": lambda: hostile.ico_with_png_frame(16000),
    "16-bit 4096² RGBA PNG of Paeth zeros, bad CRC": hostile.sixteen_bit_paeth_zeros_bad_crc,
    "1024² JPEG with 50 000 empty scans": lambda: hostile.jpeg_with_scans(50_000),
    "PNG whose ICC profile inflates to 1 GB": hostile.png_with_zlib_bomb_profile,
}


def bombs() -> dict:
    """Each bomb's answer, time and the server's peak RSS growth over idle (reset before each)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = {}
    formats = '["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "ICO"]'
    with _service(url, port, 50 * 2**20, input_formats=formats) as proc:
        for name, make in BOMBS.items():
            data = make()
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            idle = _status_kib(proc.pid, "VmRSS")
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/v1/upscale", params={"scale": 2}, content=data, timeout=120)
            seconds = time.perf_counter() - t0
            out[name] = {
                "bytes": len(data),
                "status": r.status_code,
                "seconds": seconds,
                "peak_growth_mb": (_status_kib(proc.pid, "VmHWM") - idle) / 1024,
            }
    return out


def measure(data: bytes, size: int, scale: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _service(url, port, max(len(data) + 1024, 2**20)) as proc:
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        idle = _status_kib(proc.pid, "VmRSS")
        r = httpx.post(
            f"{url}/v1/upscale",
            params={"scale": scale},
            content=data,
            headers={"Content-Type": "image/png"},
            timeout=1800,
        )
        r.raise_for_status()
        peak = _status_kib(proc.pid, "VmHWM")
    raw = size * size * 3 * (1 + scale * scale)
    return {"scale": scale, **_growth(idle, peak, raw), "response_mb": len(r.content) / 2**20}


def _growth(idle_kib: int, peak_kib: int, raw: int) -> dict:
    """RSS when idle and at the peak, and the growth between them against ``raw`` bytes of pixels."""
    growth = (peak_kib - idle_kib) * 1024
    return {
        "idle_rss_mb": idle_kib / 1024,
        "peak_rss_mb": peak_kib / 1024,
        "growth_mb": growth / 2**20,
        "input_plus_output_raw_mb": raw / 2**20,
        "growth_over_raw": growth / raw,
    }


def _sixteen_bit_rgba_png(size: int) -> bytes:
    """A smooth 16-bit RGBA picture with a gradient alpha, as pypng writes it (Pillow cannot write 16-bit colour)."""
    import png as pypng

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([np.sin(7 * xx + c) * np.cos(6 * yy - c) for c in range(3)], -1) * 0.45 + 0.5
    rgba = np.concatenate([rgb, xx[:, :, None]], axis=2)
    pixels = (rgba * 65535).astype(np.uint16).reshape(size, size * 4)
    buf = io.BytesIO()
    pypng.Writer(size, size, greyscale=False, alpha=True, bitdepth=16, compression=1).write(buf, pixels)
    return buf.getvalue()


def sixteen_bit(size: int, concurrency: int = 2, scale: int = 2) -> dict:
    """Peak RSS growth of a fresh service while it upscales ``concurrency`` 16-bit RGBA PNGs at once."""
    data = _sixteen_bit_rgba_png(size)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _service(url, port, len(data) + 1024) as proc:
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        idle = _status_kib(proc.pid, "VmRSS")

        def send(_: int) -> httpx.Response:
            params = {"scale": scale, "format": "png"}
            return httpx.post(f"{url}/v1/upscale", params=params, content=data, timeout=600)

        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(send, range(concurrency)))
        peak = _status_kib(proc.pid, "VmHWM")
    for r in answers:
        r.raise_for_status()
        with Image.open(io.BytesIO(r.content)) as im:
            assert im.size == (size * scale, size * scale), im.size
    raw = concurrency * size * size * 4 * 2 * (1 + scale * scale)  # RGBA, 2 bytes a sample, in and out
    return {
        "image": f"{size}x{size} 16-bit RGBA PNG, x{scale}, PNG out",
        "concurrency": concurrency,
        **_growth(idle, peak, raw),
        "response_mb": len(answers[0].content) / 2**20,
    }


def settled(requests: int, concurrency: int = 8, size: int = 512) -> dict:
    """RSS of a fresh service when idle, at its peak and after ``requests`` size² x2 requests at ``concurrency``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _service(url, port) as proc:
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        idle = _status_kib(proc.pid, "VmRSS")
        options = LoadOptions(duration=600, max_requests=requests, params={"scale": 2})
        step = closed_loop(url, make_payloads([size]), concurrency, options)
        if step.errors:
            raise SystemExit(f"requests failed under load: {step.errors}")
        after, peak = _status_kib(proc.pid, "VmRSS"), _status_kib(proc.pid, "VmHWM")
    in_flight_raw = concurrency * size * size * 3 * (1 + 4)
    return {
        "requests": step.requests,
        "errors": step.errors,
        "concurrency": concurrency,
        "size": size,
        "idle_rss_mb": idle / 1024,
        "peak_rss_mb": peak / 1024,
        "after_rss_mb": after / 1024,
        "kept_mb": (after - idle) / 1024,
        "in_flight_raw_mb": in_flight_raw / 2**20,
        "kept_over_in_flight_raw": (after - idle) * 1024 / in_flight_raw,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--scales", default="2,4")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sixteen-bit", action="store_true", help="only the 16-bit path (see above), at --size 2048")
    args = p.parse_args(argv)
    if args.sixteen_bit:
        row = sixteen_bit(128 if args.quick else (2048 if args.size == 4096 else args.size))
        print(
            f"{row['image']}, {row['concurrency']} at once: growth {row['growth_mb']:.0f} MB = "
            f"{row['growth_over_raw']:.2f} x raw in+out ({row['input_plus_output_raw_mb']:.0f} MB)"
        )
        if not args.quick:
            print("wrote", write_result("memory-16-bit", row))
        return
    size = 256 if args.quick else args.size
    data = _big_png(size)
    rows = [measure(data, size, int(s)) for s in args.scales.split(",")]
    load = settled(requests=8 if args.quick else 64, size=64 if args.quick else 512)
    refused = bombs()
    for r in rows:
        raw = r["input_plus_output_raw_mb"]
        print(
            f"x{r['scale']}: idle {r['idle_rss_mb']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB, "
            f"growth {r['growth_mb']:.0f} MB = {r['growth_over_raw']:.2f} x raw in+out ({raw:.0f} MB)"
        )
    print(
        f"after {load['requests']} requests of {load['size']}² x2 at c={load['concurrency']}: idle "
        f"{load['idle_rss_mb']:.0f} MB, peak {load['peak_rss_mb']:.0f} MB, after {load['after_rss_mb']:.0f} MB "
        f"(kept {load['kept_mb']:.0f} MB = {load['kept_over_in_flight_raw']:.1f} x raw bytes in flight)"
    )
    for name, b in refused.items():
        print(f"{name}: {b['status']} in {b['seconds']:.2f} s, peak RSS +{b['peak_growth_mb']:.0f} MB")
    if not args.quick:
        result = {"image": f"{size}x{size} RGB PNG", "input_png_mb": len(data) / 2**20, "runs": rows, "settled": load}
        result["bombs"] = refused
        print("wrote", write_result("memory", result))


if __name__ == "__main__":
    main()
