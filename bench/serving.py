"""Service benchmark: end-to-end throughput vs the engine alone, the naive baseline and the LitServe peer.

    python -m bench.serving [--size 512] [--concurrency 1,2,4,8] [--duration 15] [--device cuda]
                            [--model nearest] [--processes N] [--no-naive]
                            [--client-processes N] [--rounds 5] [--engine-seconds 3] [--quick]

Starts the real service, bench/naive_server.py and, where LitServe is installed
(``pip install -e .[bench]``), bench/litserve_server.py on 127.0.0.1, drives
each with client.loadtest's closed loop (x2, PNG in, PNG out — the default
format; a multipart upload for LitServe, as its documentation has it), and runs
the engine alone on the same tiles (same tile size and batch size, for
``--engine-seconds``) in this process while no request runs.
Each engine figure is the faster of two layouts: the service's (concurrent
single-threaded runs) and one run on all cores.

The headline ``service_vs_engine`` comes from ``--rounds`` paired rounds:
engine, service at its best concurrency, engine, service, ... engine; each
service figure is divided by the mean of the engine figures just before and
after it, and the median of those ratios is reported with their range.
``service_vs_best_engine`` is the older, cruder figure: the service's best
step over the best of the engine runs before and after all the servers.
Writes bench/results/service.json
and the load test's JSON/CSV/plot under bench/results/service-loadtest/
(``service-cuda`` for both with ``--device cuda``, where all three run on the GPU).
``--model nearest`` serves a near-free model instead of ``fast`` (no naive run):
its throughput is the ceiling that HTTP, codecs, tiling and batching put on
the service whatever the engine's speed (``service-nearest``).
``--processes N`` runs the service with N server processes instead of its
default for the device (``UPSCALER_PROCESSES``; the result name gains ``-pN``);
``--no-naive`` skips the naive baseline and the LitServe peer when only settings are compared;
``--cpu-kernels`` runs service and engine on ``UPSCALER_CPU_KERNELS`` (``avx2`` on an AVX-512 CPU stands in
for an AVX2 machine; the result name gains it).
``--client-processes N`` drives the closed loops from N client processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from bench.machine import MODELS, RESULTS, avx2_sgemm_gflops, machine_class, sgemm_gflops, write_result
from bench.nearest_model import write_nearest_model
from client.loadtest import LoadOptions, Payload, ProcessLoad, make_payloads, open_loop, write_results
from service.runtime.engine import Engine
from service.settings import default_max_batch

ROOT = RESULTS.parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(cmd: list[str], env: dict, url: str):
    """Run a server until the block ends; fail at once, with its log, if it dies or is not ready in 90 s.

    The server runs in a process group of its own, and the whole group is stopped at the end: LitServe's inference
    workers outlive their parent's SIGTERM."""
    log = tempfile.TemporaryFile()
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": pythonpath, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"{' '.join(cmd)} did not become ready at {url}:\n{tail}")
            time.sleep(0.2)
        yield proc
    finally:
        _signal_group(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        _signal_group(proc.pid, signal.SIGKILL)  # whatever of the group is still there
        log.close()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _ready(url: str) -> bool:
    """/readyz is 200 and, where the server reports it, every one of its processes is warmed up: the first
    process to be ready answers /readyz while the others still tune cuDNN on the same GPU."""
    try:
        if httpx.get(f"{url}/readyz", timeout=1).status_code != 200:
            return False
        metrics = httpx.get(f"{url}/metrics", timeout=1)
    except httpx.TransportError:
        return False
    counts = _process_metrics(metrics.text)
    return metrics.status_code != 200 or counts.get("upscaler_processes_ready") == counts.get("upscaler_processes")


def _process_metrics(text: str) -> dict[str, int]:
    """``upscaler_processes`` (configured) and ``upscaler_processes_ready`` from a /metrics page."""
    return {k: int(float(v)) for k, v in re.findall(r"^(upscaler_processes(?:_ready)?) (\S+)$", text, re.M)}


def engine_layouts(model: Path, tile: int, device: str, cpu_kernels: str = "auto") -> dict[str, Engine]:
    """The engine in the service's layout (``engine.workers`` batches at once) and, on a CPU, also as one run at a
    time on all cores; the faster of the two is the baseline the service is held to. Built once, measured often."""
    layouts = {"service layout": Engine(model, tile=tile, prefer_gpu=device == "cuda", cpu_kernels=cpu_kernels)}
    if device == "cpu":
        layouts["one run on all cores"] = Engine(model, tile=tile, prefer_gpu=False, workers=1, cpu_kernels=cpu_kernels)
    return {f"{name} ({engine.workers} x {engine.threads} threads)": engine for name, engine in layouts.items()}


def engine_alone(layouts: dict[str, Engine], size: int, batch: int, seconds: float) -> dict[str, float]:
    """Output MPix/s of each layout on the tiles of one size x size image, batched as the service batches."""
    img = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    return {name: _engine_mpix(engine, img, batch, seconds) for name, engine in layouts.items()}


def _engine_mpix(engine: Engine, img: np.ndarray, batch: int, seconds: float) -> float:
    """The image's tiles run again and again for ``seconds`` after one warm-up run: output pixels over the time
    taken, as the service's figure is its output over a closed loop's duration. (The median of five runs of one
    image, 0.25 s, swung with the machine's speed from second to second: paired rounds ranged 0.80-0.95.)"""
    key = next(iter(engine.specs))
    grid = engine.grid(key, img.shape[0], img.shape[1])
    padded = grid.pad(img)
    tiles = np.stack([grid.cut(padded, i).transpose(2, 0, 1) for i in range(len(grid))])
    batches = [np.ascontiguousarray(tiles[i : i + batch]) for i in range(0, len(tiles), batch)]
    with ThreadPoolExecutor(engine.workers) as pool:

        def run() -> None:
            list(pool.map(lambda b: engine.run(key, b), batches))

        run()
        runs, t0 = 0, time.perf_counter()
        while not runs or time.perf_counter() - t0 < seconds:
            run()
            runs += 1
        elapsed = time.perf_counter() - t0
    return runs * img.shape[0] * img.shape[1] * grid.scale**2 / elapsed / 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--duration", type=float, default=15)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--batch", type=int, help="tiles per model execution (default: the service's for the device)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where service, engine and naive run")
    p.add_argument(
        "--model",
        choices=["fast", "nearest"],
        default="fast",
        help="nearest: a near-free model (bench/nearest_model.py) to measure the service's own ceiling; no naive run",
    )
    p.add_argument("--processes", type=int, default=0, help="server processes (default: the service's default)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive baseline and the LitServe peer")
    p.add_argument(
        "--cpu-kernels",
        default="auto",
        choices=["auto", "avx512", "avx2", "onnxruntime"],
        help="what runs the model on a CPU (UPSCALER_CPU_KERNELS)",
    )
    p.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="load generator processes (for services faster than one can read)",
    )
    p.add_argument(
        "--rounds", type=int, default=5, help="paired rounds of engine alone and service at its best concurrency"
    )
    p.add_argument("--engine-seconds", type=float, default=3, help="how long each layout of the engine alone runs")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny image, short steps, no result file")
    args = p.parse_args(argv)
    parts = [v for v in (args.device, args.model, args.cpu_kernels) if v not in ("cpu", "fast", "auto")]
    name = "-".join(["service", *parts, *([f"p{args.processes}"] if args.processes else [])])
    size = 48 if args.quick else args.size
    duration, max_requests = (1, 4) if args.quick else (args.duration, 10_000)
    levels = [int(c) for c in args.concurrency.split(",")]
    payloads = make_payloads([size])
    load = LoadOptions(duration=duration, max_requests=max_requests, params={"scale": 2})

    with tempfile.TemporaryDirectory() as tmp:
        model = MODELS / "fast_x2.onnx" if args.model == "fast" else write_nearest_model(Path(tmp))
        layouts = engine_layouts(model, args.tile, args.device, args.cpu_kernels)
        service_layout = next(iter(layouts.values()))
        args.batch = args.batch or default_max_batch(service_layout.on_gpu, service_layout.kernels_run_every_model)
        engine_seconds = 0 if args.quick else args.engine_seconds
        before = engine_alone(layouts, size, args.batch, engine_seconds)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            "UPSCALER_PORT": str(port),
            "UPSCALER_TILE": str(args.tile),
            "UPSCALER_MAX_BATCH": str(args.batch),
            "UPSCALER_LOG_LEVEL": "warning",
            "UPSCALER_DEVICE": args.device,
            "UPSCALER_MODEL_DIR": str(model.parent),
            "UPSCALER_DEFAULT_MODEL": args.model,
            "UPSCALER_PROCESSES": str(args.processes),
            "UPSCALER_CPU_KERNELS": args.cpu_kernels,
        }
        with running([sys.executable, "-m", "service"], env, url):
            processes = _process_metrics(httpx.get(f"{url}/metrics").text).get("upscaler_processes")
            served = httpx.get(f"{url}/v1/models").json()["models"]
            kernels = sorted({f"{m['kernels']} {m.get('instruction_set') or ''}".strip() for m in served})
            with ProcessLoad(args.client_processes) as clients:
                ours = [clients.closed_loop(url, payloads, c, load) for c in levels]
                if not any(r.ok for r in ours):
                    raise SystemExit(f"no request to the service succeeded: {[r.errors for r in ours]}")
                best = max(ours, key=lambda r: r.output_mpix_per_s)
                rounds = paired_rounds(
                    lambda: max(engine_alone(layouts, size, args.batch, engine_seconds).values()),
                    lambda: clients.closed_loop(url, payloads, int(best.level), load).output_mpix_per_s,
                    1 if args.quick else args.rounds,
                )
            half_rate = max(r.requests_per_s for r in ours) / 2  # open loop at half the peak: the latency promise
            half = open_loop(url, payloads, half_rate, load)
        naive, litserve = [], []
        if args.model == "fast" and not args.no_naive:
            naive = naive_run(payloads, levels, load, args.device, args.client_processes)
            if args.device == "cpu":
                litserve = litserve_run(payloads, levels, load, args.client_processes)
        # Again after the servers ran: this machine's speed drifts, and the baseline is the best engine figure.
        after = engine_alone(layouts, size, args.batch, engine_seconds)
    by_layout = {f"{k}, {when}": v for when, d in (("before", before), ("after", after)) for k, v in d.items()}
    engine_mpix = max(by_layout.values())
    ratios = [r["service_vs_engine"] for r in rounds]
    result = {
        "image": f"{size}x{size} PNG -> x2 PNG",
        "model": args.model,
        "tile": args.tile,
        "batch": args.batch,
        "processes": processes,  # as the service reports it
        "kernels": kernels,  # what ran the model in the service, as /v1/models says
        "client_processes": args.client_processes,
        "engine_alone_output_mpix_per_s": engine_mpix,
        "engine_alone_by_layout": by_layout,
        "service_best_output_mpix_per_s": best.output_mpix_per_s,
        "service_vs_best_engine": best.output_mpix_per_s / engine_mpix,
        # The headline: median over rounds of the service at its best level against the engine just before and
        # just after it, so both sides of each ratio see the machine in the same state.
        "service_vs_engine": statistics.median(ratios),
        "service_vs_engine_range": [min(ratios), max(ratios)],
        "paired_rounds": rounds,
        "open_loop_at_half_peak": asdict(half),
        "p99_over_p50_at_half_peak": half.p99_ms / half.p50_ms,
        "service": [asdict(r) for r in ours],
    }
    if naive:
        ratio = ours[-1].output_mpix_per_s / naive[-1].output_mpix_per_s
        result |= {f"service_vs_naive_at_concurrency_{levels[-1]}": ratio, "naive": [asdict(r) for r in naive]}
    if litserve:
        ratio = best.output_mpix_per_s / max(r.output_mpix_per_s for r in litserve)
        result |= {"service_vs_litserve_best_to_best": ratio, "litserve": [asdict(r) for r in litserve]}
    if litserve or naive:
        result["peers_machine_class"] = machine_class()
    if args.device == "cpu" and args.model == "fast" and not args.quick:
        result |= arithmetic_rate(best.output_mpix_per_s, model, args.cpu_kernels)
    for r in ours + [half] + naive + litserve:
        print(f"{r.level:>3} {r.output_mpix_per_s:7.2f} MPix/s p50 {r.p50_ms:7.1f} p99 {r.p99_ms:7.1f} {r.errors}")
    print(
        f"engine alone {engine_mpix:.2f} MPix/s; best service / best engine {result['service_vs_best_engine']:.2f}; "
        f"paired rounds: service/engine {', '.join(f'{r:.3f}' for r in ratios)}, "
        f"median {result['service_vs_engine']:.3f}"
    )
    if not args.quick:
        write_results(ours + [half], RESULTS / f"{name}-loadtest", {"image": result["image"]})
        print("wrote", write_result(name, result))


def paired_rounds(engine: Callable[[], float], service: Callable[[], float], rounds: int) -> list[dict]:
    """Engine, service, engine, ... service, engine: each service figure against the mean of the engine figures
    measured just before and just after it. This machine's engine speed swung by 10-30% between minutes (7.9 to
    11.4 MPix/s in one run), so a ratio of two figures taken minutes apart says as much about the drift as about
    the service."""
    before, out = engine(), []
    for _ in range(rounds):
        served = service()
        after = engine()
        out.append(
            {
                "engine_before": before,
                "service": served,
                "engine_after": after,
                "service_vs_engine": served / ((before + after) / 2),
            }
        )
        before = after
    return out


def naive_run(payloads: list, levels: list[int], load: LoadOptions, device: str, client_processes: int) -> list:
    """The naive baseline server (bench/naive_server.py) under the same closed-loop levels."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "bench.naive_server", "--port", str(port), "--device", device], {}, url):
        with ProcessLoad(client_processes) as clients:
            return [clients.closed_loop(url, payloads, c, load) for c in levels]


def arithmetic_rate(output_mpix_per_s: float, model: Path, cpu_kernels: str) -> dict:
    """The service's output as multiply-adds per second, against SGEMM for the instruction set it ran on (AVX2
    kernels' SGEMM where the service was held to AVX2), measured now."""
    scale = int(model.stem.rsplit("_x", 1)[1])
    macs = json.loads(model.with_suffix(".json").read_text())["macs_per_input_pixel"]
    gflops = output_mpix_per_s * 1e6 / scale**2 * macs * 2 / 1e9
    sgemm = avx2_sgemm_gflops(2048, repeat=5) if cpu_kernels == "avx2" else sgemm_gflops(2048, repeat=5)
    return {"service_gflops": gflops, "sgemm_gflops": sgemm, "service_fraction_of_sgemm": gflops / sgemm}


def litserve_run(payloads: list[Payload], levels: list[int], load: LoadOptions, client_processes: int) -> list:
    """The LitServe peer (bench/litserve_server.py) under the same closed-loop levels, each image sent as the
    multipart upload its documentation reads; none where LitServe is not installed."""
    try:
        import litserve  # noqa: F401
    except ImportError:
        print("litserve is not installed (pip install -e .[bench]); no LitServe peer", file=sys.stderr)
        return []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    uploads = [_multipart(p) for p in payloads]
    with running([sys.executable, "-m", "bench.litserve_server", "--port", str(port)], {}, url):
        with ProcessLoad(client_processes) as clients:
            return [clients.closed_loop(url, uploads, c, load) for c in levels]


def _multipart(payload: Payload) -> Payload:
    """The payload as a multipart/form-data body with one ``file`` field."""
    boundary = "upscaler-bench-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="image.png"\r\n'
        f"Content-Type: {payload.content_type}\r\n\r\n"
    ).encode()
    body = head + payload.data + f"\r\n--{boundary}--\r\n".encode()
    return Payload(body, f"multipart/form-data; boundary={boundary}", payload.width, payload.height)


if __name__ == "__main__":
    main()
