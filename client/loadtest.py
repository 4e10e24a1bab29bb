"""Load generator: closed loop over concurrency levels, or open loop at a fixed rate.

    python -m client.loadtest --server http://127.0.0.1:8000 --concurrency 1,2,4,8 --duration 10 --sizes 128,256
    python -m client.loadtest --server URL --rate 5 --duration 20 --images photos/
    python -m client.loadtest --server URL --concurrency 16,32,64 --processes 4

Closed loop: for each concurrency level N, N workers (threads, one keep-alive
connection each) post back to back for ``--duration`` seconds (or ``--max-requests``). Open loop: requests start at
``--rate`` per second whatever the service does, so queueing shows up as
latency. Per step it reports requests/s, output MPix/s, p50/p90/p95/p99
latency and errors by status; ``--processes N`` spreads the closed loop's
workers over N client processes for servers faster than one Python client
can drive. It writes ``loadtest.json``, ``loadtest.csv``
and ``loadtest.png`` (throughput and latency percentiles against the load) to ``--out``.

The client speaks HTTP with the standard library's ``http.client``, not httpx:
in the benchmarks it shares the machine with the service, and it costs several
times less CPU per request than httpx's async client.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import itertools
import json
import logging
import multiprocessing
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import numpy as np
from PIL import Image

__all__ = [
    "Payload",
    "StepResult",
    "LoadOptions",
    "ProcessLoad",
    "make_payloads",
    "load_payloads",
    "closed_loop",
    "open_loop",
    "main",
]

log = logging.getLogger("client.loadtest")

_OPEN_LOOP_CONNECTIONS = 256  # most requests in flight at once in the open loop


@dataclass(frozen=True)
class Payload:
    data: bytes
    content_type: str
    width: int
    height: int


@dataclass
class StepResult:
    mode: str  # closed or open
    level: float  # concurrency (closed) or offered requests/s (open)
    seconds: float
    requests: int
    ok: int
    requests_per_s: float
    output_mpix_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)  # status (or exception name) -> count


def make_payloads(sizes: list[int], seed: int = 0) -> list[Payload]:
    """Photo-like PNGs of the given square sizes (smooth colour fields plus mild noise)."""
    rng = np.random.default_rng(seed)
    payloads = []
    for n in sizes:
        yy, xx = np.mgrid[0:n, 0:n] / n
        img = np.stack([np.sin(5 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1) * 0.4 + 0.5
        img = np.clip(img + 0.03 * rng.standard_normal(img.shape), 0, 1)
        buf = io.BytesIO()
        Image.fromarray((img * 255).astype(np.uint8)).save(buf, "PNG")
        payloads.append(Payload(buf.getvalue(), "image/png", n, n))
    return payloads


def load_payloads(folder: str | Path, limit: int = 64) -> list[Payload]:
    """Up to ``limit`` images from a folder, sent as they are."""
    payloads = []
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp") or len(payloads) >= limit:
            continue
        with Image.open(path) as im:
            w, h = im.size
            kind = (im.format or "png").lower()
        payloads.append(Payload(path.read_bytes(), f"image/{kind}", w, h))
    if not payloads:
        raise SystemExit(f"no images in {folder}")
    return payloads


class _Recorder:
    """Latencies, statuses and output pixels of one step; shared by the step's threads."""

    def __init__(self, scale: int):
        self.scale = scale
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.pixels = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # sent back from client processes: the lock stays behind
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__ |= state | {"_lock": threading.Lock()}

    def send(self, conn: http.client.HTTPConnection, request: _Request, payload: Payload) -> None:
        t0 = time.perf_counter()
        try:
            conn.request(
                "POST",
                request.target,
                body=payload.data,
                headers={**request.headers, "Content-Type": payload.content_type},
            )
            response = conn.getresponse()
            response.read()  # the whole body, as a client would, and so the connection can be reused
            status = str(response.status)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()  # reconnects on the next request
            status = type(exc).__name__
        latency = time.perf_counter() - t0
        with self._lock:
            self.statuses[status] += 1
            if status == "200":
                self.latencies.append(latency)
                self.pixels += payload.width * payload.height * self.scale**2

    def merge(self, other: _Recorder) -> None:
        self.latencies += other.latencies
        self.statuses += other.statuses
        self.pixels += other.pixels

    def result(self, mode: str, level: float, seconds: float) -> StepResult:
        lat = np.array(self.latencies or [np.nan]) * 1000
        total = sum(self.statuses.values())
        ok = self.statuses.get("200", 0)
        p50, p90, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 90, 95, 99))
        return StepResult(
            mode=mode,
            level=level,
            seconds=round(seconds, 3),
            requests=total,
            ok=ok,
            requests_per_s=ok / seconds,
            output_mpix_per_s=self.pixels / seconds / 1e6,
            p50_ms=p50,
            p90_ms=p90,
            p95_ms=p95,
            p99_ms=p99,
            errors={k: v for k, v in self.statuses.items() if k != "200"},
        )


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """How one load step runs, whichever loop drives it."""

    duration: float  # seconds
    max_requests: int  # cap on requests in the step
    params: dict = field(default_factory=dict)  # query parameters of /v1/upscale
    timeout: float = 120.0  # seconds per request
    api_key: str | None = None

    @property
    def scale(self) -> int:
        return int(self.params.get("scale", 2))


@dataclass(frozen=True)
class _Request:
    """Where and how every request of a step goes."""

    scheme: str
    host: str
    port: int | None
    target: str  # path and query of /v1/upscale
    headers: dict[str, str]
    timeout: float

    @classmethod
    def of(cls, server: str, options: LoadOptions) -> _Request:
        url = urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"--server must be an http:// or https:// URL, not {server!r}")
        target = f"{url.path.rstrip('/')}/v1/upscale" + (f"?{urlencode(options.params)}" if options.params else "")
        headers = {"X-API-Key": options.api_key} if options.api_key else {}
        return cls(url.scheme, url.hostname, url.port, target, headers, options.timeout)

    def connect(self) -> http.client.HTTPConnection:
        """A keep-alive connection (opened on its first request)."""
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=self.timeout)


def closed_loop(server: str, payloads: list[Payload], concurrency: int, options: LoadOptions) -> StepResult:
    """``concurrency`` workers post back to back until ``duration`` or ``max_requests``."""
    rec, seconds = _closed_workers(server, payloads, range(concurrency), concurrency, options)
    return rec.result("closed", concurrency, seconds)


def _closed_workers(
    server: str, payloads: list[Payload], workers: range, concurrency: int, options: LoadOptions
) -> tuple[_Recorder, float]:
    """The closed loop's workers numbered ``workers`` (of ``concurrency``), one thread and connection each:
    what they recorded, and for how long."""
    rec, request = _Recorder(options.scale), _Request.of(server, options)
    tickets = itertools.count()  # next() is atomic: no request is sent twice or over the cap
    deadline = time.perf_counter() + options.duration

    def worker(offset: int) -> None:
        conn, i = request.connect(), offset
        try:
            while time.perf_counter() < deadline and next(tickets) < options.max_requests:
                rec.send(conn, request, payloads[i % len(payloads)])
                i += concurrency
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in workers]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rec, time.perf_counter() - t0


class ProcessLoad:
    """The closed loop's workers spread over ``processes`` client processes, results merged exactly.

    A GPU service with several server processes answers faster than one client process's threads can read.
    Use as a context manager; the processes are started once and reused for every step.
    """

    def __init__(self, processes: int):
        self.processes = processes
        self._pool = None
        if processes > 1:
            self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
            list(self._pool.map(time.sleep, [0.2] * processes))  # start them all now, not during a step

    def __enter__(self) -> ProcessLoad:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool:
            self._pool.shutdown()

    def closed_loop(self, server: str, payloads: list[Payload], concurrency: int, options: LoadOptions) -> StepResult:
        """``closed_loop``, in this process when there is one client process."""
        if self._pool is None:
            return closed_loop(server, payloads, concurrency, options)
        parts = [range(k, concurrency, self.processes) for k in range(min(self.processes, concurrency))]
        # Requests in proportion to each part's workers, so every worker gets about the same number.
        quotas = [options.max_requests * len(workers) // concurrency for workers in parts]
        for k in range(options.max_requests - sum(quotas)):
            quotas[k] += 1
        start = time.time() + 0.2  # every process starts its clock together
        futures = [
            self._pool.submit(
                _closed_part, server, payloads, workers, concurrency, replace(options, max_requests=quota), start
            )
            for workers, quota in zip(parts, quotas, strict=True)
        ]
        merged, began, ended = _Recorder(options.scale), [], []
        for future in futures:
            rec, t0, t1 = future.result()
            merged.merge(rec)
            began.append(t0)
            ended.append(t1)
        return merged.result("closed", concurrency, max(ended) - min(began))


def _closed_part(
    server: str, payloads: list[Payload], workers: range, concurrency: int, options: LoadOptions, start: float
) -> tuple[_Recorder, float, float]:
    """One client process's part of a closed loop: what it recorded, and when (wall clock) it began and ended."""
    time.sleep(max(0.0, start - time.time()))
    t0 = time.time()
    rec, _ = _closed_workers(server, payloads, workers, concurrency, options)
    return rec, t0, time.time()


def open_loop(server: str, payloads: list[Payload], rate: float, options: LoadOptions) -> StepResult:
    """Start a request every 1/``rate`` seconds for ``duration``, however slowly the service answers
    (up to ``_OPEN_LOOP_CONNECTIONS`` in flight, each thread with its own keep-alive connection)."""
    if rate <= 0:
        raise ValueError(f"open loop needs a rate above 0 requests/s, not {rate}")
    rec, request = _Recorder(options.scale), _Request.of(server, options)
    count = min(options.max_requests, max(1, int(rate * options.duration)))
    local, opened = threading.local(), []

    def send(payload: Payload) -> None:
        if not hasattr(local, "conn"):
            local.conn = request.connect()
            opened.append(local.conn)
        rec.send(local.conn, request, payload)

    with ThreadPoolExecutor(_OPEN_LOOP_CONNECTIONS) as pool:
        t0 = time.perf_counter()
        for i in range(count):
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            pool.submit(send, payloads[i % len(payloads)])
    seconds = time.perf_counter() - t0
    for conn in opened:
        conn.close()
    return rec.result("open", rate, seconds)


def write_results(results: list[StepResult], out: Path, meta: dict) -> list[Path]:
    """The steps as JSON and CSV, and their plot where matplotlib is installed; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    (out / "loadtest.json").write_text(json.dumps({"meta": meta, "steps": rows}, indent=2) + "\n")
    with open(out / "loadtest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "errors": json.dumps(r["errors"])} for r in rows)
    written = [out / "loadtest.json", out / "loadtest.csv"]
    if _plot(results, out / "loadtest.png"):
        written.append(out / "loadtest.png")
    return written


def _plot(results: list[StepResult], path: Path) -> bool:
    """Throughput and latency percentiles against the load (concurrency, or offered requests/s); False where
    matplotlib is not installed (``make serve`` installs it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install matplotlib); no plot written")
        return False
    results = [r for r in results if r.mode == results[0].mode]  # one kind of load on the x axis
    load = [r.level for r in results]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(load, [r.output_mpix_per_s for r in results], "o-", label="output MPix/s")
    top.set_ylabel("output MPix/s")
    top.set_ylim(bottom=0)
    top.set_title(f"{path.parent.name}: throughput and latency by load")
    for name in ("p50", "p90", "p99"):
        bottom.plot(load, [getattr(r, f"{name}_ms") for r in results], "o-", label=name)
    bottom.set_ylabel("latency (ms)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("requests in flight (closed loop)" if results[0].mode == "closed" else "offered requests/s")
    bottom.legend()
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        if len(load) > 2 and max(load) / max(min(load), 1e-9) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(load, [f"{x:g}" for x in load])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _report(r: StepResult) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "none"
    return (
        f"{r.mode:6} {r.level:>6g}  {r.requests_per_s:7.2f} req/s  {r.output_mpix_per_s:7.2f} MPix/s  "
        f"p50 {r.p50_ms:7.1f}  p90 {r.p90_ms:7.1f}  p95 {r.p95_ms:7.1f}  p99 {r.p99_ms:7.1f} ms  errors: {errors}"
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="http://127.0.0.1:8000", help="base URL (default: %(default)s)")
    p.add_argument("--concurrency", default="1,2,4,8,16", help="closed-loop levels, comma separated")
    p.add_argument("--rate", type=float, help="open loop at this many requests/s instead")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    p.add_argument("--max-requests", type=int, default=1000, help="cap on requests per step")
    p.add_argument("--sizes", default="128,256,512", help="square PNG sizes to generate")
    p.add_argument("--images", help="send these images instead of generated ones")
    p.add_argument("--scale", type=int, default=2, choices=(2, 3, 4))
    p.add_argument("--format", choices=("png", "jpeg", "webp"))
    p.add_argument("--processes", type=int, default=1, help="client processes sharing the closed loop's workers")
    p.add_argument("--api-key")
    p.add_argument("--out", default="loadtest-results", help="folder for JSON, CSV and plot")
    args = p.parse_args(argv)

    payloads = load_payloads(args.images) if args.images else make_payloads([int(s) for s in args.sizes.split(",")])
    params = {"scale": args.scale, **({"format": args.format} if args.format else {})}
    options = LoadOptions(duration=args.duration, max_requests=args.max_requests, params=params, api_key=args.api_key)
    results = []
    if args.rate:
        results.append(open_loop(args.server, payloads, args.rate, options))
        log.info(_report(results[-1]))
    else:
        with ProcessLoad(args.processes) as load:
            for level in (int(c) for c in args.concurrency.split(",")):
                results.append(load.closed_loop(args.server, payloads, level, options))
                log.info(_report(results[-1]))
    meta = {"server": args.server, "payloads": [f"{p.width}x{p.height}" for p in payloads], **params}
    written = write_results(results, Path(args.out), meta)
    log.info("wrote %s", ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
