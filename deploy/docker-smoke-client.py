"""HTTP side of deploy/docker-smoke.sh, standard library only (it runs on the host, outside any venv).

    python3 deploy/docker-smoke-client.py URL wait-ready SECONDS   # until /readyz answers 200
    python3 deploy/docker-smoke-client.py URL upscale              # one PNG, x2, checks size, kernels, /metrics
    python3 deploy/docker-smoke-client.py URL device cpu|cuda      # /v1/models says the models run there; prints why

Exits non-zero with the reason when the service does not do what it should.
"""

from __future__ import annotations

import json
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib


def make_png(width: int, height: int) -> bytes:
    """An 8-bit RGB gradient PNG (several tiles wide, so the service cuts and stitches)."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, (x + y) % 256))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"answer is not a PNG: {data[:60]!r}")
    return struct.unpack(">II", data[16:24])


def wait_ready(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    print(f"ready after {seconds - (deadline - time.monotonic()):.1f} s", file=sys.stderr)
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"/readyz not 200 after {seconds} s: {last}")


def upscale(url: str) -> None:
    width, height = 300, 170
    request = urllib.request.Request(
        f"{url}/v1/upscale?scale=2", data=make_png(width, height), headers={"Content-Type": "image/png"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as r:
        body, content_type = r.read(), r.headers.get("Content-Type")
    ms = (time.perf_counter() - started) * 1000
    if content_type != "image/png" or png_size(body) != (2 * width, 2 * height):
        raise SystemExit(f"bad answer: {content_type}, {png_size(body)} (want {(2 * width, 2 * height)})")
    size = f"{2 * width}x{2 * height} PNG ({len(body)} bytes)"
    print(f"upscaled {width}x{height} -> {size} in {ms:.0f} ms", file=sys.stderr)
    check_kernels(url)
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    if 'upscaler_requests_total{path="/v1/upscale",status="200"}' not in metrics:
        raise SystemExit("/metrics does not count the upscale request")


def check_kernels(url: str) -> None:
    """The image compiles the native kernels: on a host CPU with AVX2 + FMA or AVX-512 they must run the models."""
    with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
        models = json.load(r)["models"]
    kernels = {m["kernels"] for m in models}
    isas = {m.get("instruction_set") for m in models} - {None}
    print(f"models run on: {', '.join(sorted(kernels))} {sorted(isas)}", file=sys.stderr)
    with open("/proc/cpuinfo") as f:
        flags = set(f.read().split())
    if ({"avx2", "fma"} <= flags or "avx512f" in flags) and kernels != {"native"}:
        raise SystemExit(
            f"this CPU has AVX2 or AVX-512 but the image runs models on {kernels}: were the kernels built?"
        )


def device(url: str, want: str) -> None:
    """/v1/models must say the models run on ``want``, with the reason; the two are printed as JSON on stdout."""
    with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
        body = json.load(r)
    got = {k: body.get(k) for k in ("device", "device_reason", "provider")}
    print(f"models run on {got['device']} ({got['provider']}): {got['device_reason']}", file=sys.stderr)
    if got["device"] != want or not got["device_reason"]:
        raise SystemExit(f"/v1/models says {got}, not {want} with a reason")
    print(json.dumps(got))


if __name__ == "__main__":
    base, command = sys.argv[1], sys.argv[2]
    if command == "wait-ready":
        wait_ready(base, float(sys.argv[3]))
    elif command == "upscale":
        upscale(base)
    elif command == "device":
        device(base, sys.argv[3])
    else:
        raise SystemExit(__doc__)
