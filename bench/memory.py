"""Memory benchmark: peak RSS growth of the service while it upscales one large image.

    python -m bench.memory [--size 4096] [--scales 2,4] [--quick]

For each scale a fresh service is started; its idle RSS is read once it is
ready, one size x size PNG is upscaled (PNG out), and the process's peak RSS
(VmHWM) is compared with the raw bytes of input plus output. Linux only.
Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.machine import write_result
from bench.service import free_port, running


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


def measure(data: bytes, size: int, scale: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "UPSCALER_PORT": str(port),
        "UPSCALER_MAX_BODY_BYTES": str(max(len(data) + 1024, 2**20)),
        "UPSCALER_LOG_LEVEL": "warning",
    }
    with running([sys.executable, "-m", "service"], env, url) as proc:
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
    growth = (peak - idle) * 1024
    return {
        "scale": scale,
        "idle_rss_mb": idle / 1024,
        "peak_rss_mb": peak / 1024,
        "growth_mb": growth / 2**20,
        "input_plus_output_raw_mb": raw / 2**20,
        "growth_over_raw": growth / raw,
        "response_mb": len(r.content) / 2**20,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--scales", default="2,4")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    size = 256 if args.quick else args.size
    data = _big_png(size)
    rows = [measure(data, size, int(s)) for s in args.scales.split(",")]
    for r in rows:
        raw = r["input_plus_output_raw_mb"]
        print(
            f"x{r['scale']}: idle {r['idle_rss_mb']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB, "
            f"growth {r['growth_mb']:.0f} MB = {r['growth_over_raw']:.2f} x raw in+out ({raw:.0f} MB)"
        )
    if not args.quick:
        print(
            "wrote",
            write_result(
                "memory", {"image": f"{size}x{size} RGB PNG", "input_png_mb": len(data) / 2**20, "runs": rows}
            ),
        )


if __name__ == "__main__":
    main()
