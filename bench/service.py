"""Service benchmark: end-to-end throughput vs the engine alone and vs the naive baseline.

    python -m bench.service [--size 512] [--concurrency 1,2,4,8] [--duration 15] [--quick]

Starts the real service and bench/naive_server.py on 127.0.0.1, drives both
with client.loadtest's closed loop (x2, PNG in, PNG out — the default
format), and runs the engine alone on the same tiles (same tile size and
batch size) in this process while no server runs. Writes bench/results/service.json
and the load test's JSON/CSV/plot under bench/results/service-loadtest/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict

import httpx
import numpy as np

from bench.machine import RESULTS, timed, write_result
from client.loadtest import LoadOptions, closed_loop, make_payloads, open_loop, write_results
from service.engine import Engine

ROOT = RESULTS.parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(cmd: list[str], env: dict, url: str):
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def engine_alone(size: int, tile: int, batch: int, repeat: int) -> float:
    """Output MPix/s of the engine on the tiles of one size x size image, batched as the service batches."""
    engine = Engine(ROOT / "export" / "models" / "fast_x2.onnx", tile=tile, prefer_gpu=False)
    key = next(iter(engine.specs))
    img = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    grid = engine.grid(key, size, size)
    padded = grid.pad(img)
    tiles = np.stack([grid.cut(padded, i).transpose(2, 0, 1) for i in range(len(grid))])
    batches = [np.ascontiguousarray(tiles[i : i + batch]) for i in range(0, len(tiles), batch)]
    seconds = timed(lambda: [engine.run(key, b) for b in batches], repeat=repeat)
    return (2 * size) ** 2 / seconds / 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--duration", type=float, default=15)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny image, short steps, no result file")
    args = p.parse_args(argv)
    size = 48 if args.quick else args.size
    duration, max_requests = (1, 4) if args.quick else (args.duration, 10_000)
    levels = [int(c) for c in args.concurrency.split(",")]
    payloads = make_payloads([size])
    load = LoadOptions(duration=duration, max_requests=max_requests, params={"scale": 2})

    engine_mpix = engine_alone(size, args.tile, args.batch, repeat=1 if args.quick else 5)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "UPSCALER_PORT": str(port),
        "UPSCALER_TILE": str(args.tile),
        "UPSCALER_MAX_BATCH": str(args.batch),
        "UPSCALER_LOG_LEVEL": "warning",
    }
    with running([sys.executable, "-m", "service"], env, url):
        ours = [asyncio.run(closed_loop(url, payloads, c, load)) for c in levels]
        half_rate = max(r.requests_per_s for r in ours) / 2  # open loop at half the peak: the latency promise
        half = asyncio.run(open_loop(url, payloads, half_rate, load))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "bench.naive_server", "--port", str(port)], {}, url):
        naive = [asyncio.run(closed_loop(url, payloads, c, load)) for c in levels]

    best = max(ours, key=lambda r: r.output_mpix_per_s)
    at8 = {r.level: r for r in ours}.get(max(levels)), {r.level: r for r in naive}.get(max(levels))
    result = {
        "image": f"{size}x{size} PNG -> x2 PNG",
        "tile": args.tile,
        "batch": args.batch,
        "engine_alone_output_mpix_per_s": engine_mpix,
        "service_best_output_mpix_per_s": best.output_mpix_per_s,
        "service_vs_engine": best.output_mpix_per_s / engine_mpix,
        f"service_vs_naive_at_concurrency_{max(levels)}": at8[0].output_mpix_per_s / at8[1].output_mpix_per_s,
        "open_loop_at_half_peak": asdict(half),
        "p99_over_p50_at_half_peak": half.p99_ms / half.p50_ms,
        "service": [asdict(r) for r in ours],
        "naive": [asdict(r) for r in naive],
    }
    for r in ours + [half] + naive:
        print(f"{r.level:>3} {r.output_mpix_per_s:7.2f} MPix/s p50 {r.p50_ms:7.1f} p99 {r.p99_ms:7.1f} {r.errors}")
    print(f"engine alone {engine_mpix:.2f} MPix/s; service/engine {result['service_vs_engine']:.2f}")
    if not args.quick:
        write_results(ours + [half], RESULTS / "service-loadtest", {"image": result["image"]})
        print("wrote", write_result("service", result))


if __name__ == "__main__":
    main()
