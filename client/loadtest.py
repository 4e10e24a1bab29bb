"""Load generator: closed loop over concurrency levels, or open loop at a fixed rate.

    python -m client.loadtest --server http://127.0.0.1:8000 --concurrency 1,2,4,8 --duration 10 --sizes 128,256
    python -m client.loadtest --server URL --rate 5 --duration 20 --images photos/
    python -m client.loadtest --server URL --concurrency 16,32,64 --processes 4
    python -m client.loadtest --server URL --concurrency 6 --duration 30 \
        --mix web:256:png:2:5,batch:1600x1200:jpeg90:4:1

Closed loop: for each concurrency level N, N workers (threads, one keep-alive
connection each) post back to back for ``--duration`` seconds (or ``--max-requests``). Open loop: requests start at
``--rate`` per second whatever the service does, so queueing shows up as
latency. Per step it reports requests/s, output MPix/s, p50/p90/p95/p99
latency and errors by status. ``--mix`` replays a weighted mix of classes of
request (``name:size:format:scale:weight[:requests]``, comma separated; size
``N`` or ``WxH``, format ``png``, ``jpeg``/``webp`` with an optional quality
such as ``jpeg75``): in the closed loop a class gets its weight's share of the
workers (at least one), in the open loop its share of the requests, and each
step reports every class's percentiles beside the overall ones. A class with a
number of requests stops after sending that many (closed loop), so that a step
can time the same work under two servers or settings. ``--processes N`` spreads the closed loop's
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
import re
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
    "TrafficClass",
    "StepResult",
    "LoadOptions",
    "ProcessLoad",
    "make_payload",
    "make_payloads",
    "load_payloads",
    "parse_mix",
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
    classes: dict[str, dict] = field(default_factory=dict)  # a mix's classes: name -> their own figures, as above


@dataclass(frozen=True, kw_only=True)
class TrafficClass:
    """One kind of request in a mix: its images, its query parameters (over ``LoadOptions.params``) and its
    weight (its share of the closed loop's workers, or of the open loop's requests)."""

    name: str
    payloads: list[Payload]
    params: dict = field(default_factory=dict)
    weight: int = 1
    requests: int | None = None  # closed loop: the class's workers stop after this many, shared out among them


def make_payload(width: int, height: int, fmt: str = "png", quality: int = 90, seed: int = 0) -> Payload:
    """A photo-like image (smooth colour fields plus mild noise) encoded as PNG, JPEG or WebP."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    img = np.stack([np.sin(5 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1) * 0.4 + 0.5
    img = np.clip(img + 0.03 * rng.standard_normal(img.shape), 0, 1)
    buf = io.BytesIO()
    lossy = {} if fmt == "png" else {"quality": quality}
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, fmt.upper(), **lossy)
    return Payload(buf.getvalue(), f"image/{fmt}", width, height)


def make_payloads(sizes: list[int], seed: int = 0) -> list[Payload]:
    """Photo-like PNGs of the given square sizes."""
    return [make_payload(n, n, seed=seed + i) for i, n in enumerate(sizes)]


def parse_mix(spec: str) -> list[TrafficClass]:
    """Classes from ``name:size:format:scale:weight[:requests],...``: e.g.
    ``web:256:png:2:5,batch:1600x1200:jpeg90:4:1`` (size ``N`` or ``WxH``; format png, jpeg or webp, with an optional
    quality; weight and requests whole numbers >= 1)."""
    classes = []
    for part in spec.split(","):
        fields = part.strip().split(":")
        m = re.fullmatch(r"(png|jpeg|webp)(\d{1,3})?", fields[2]) if len(fields) in (5, 6) else None
        size = re.fullmatch(r"(\d+)(?:x(\d+))?", fields[1]) if m else None
        counts = fields[4:]
        if not (size and fields[3] in ("2", "3", "4") and all(c.isdigit() and int(c) >= 1 for c in counts)):
            raise ValueError(
                f"a class is name:size:format:scale:weight[:requests] (e.g. web:256:png:2:5), not {part!r}"
            )
        width = int(size[1])
        height = int(size[2] or width)
        payload = make_payload(width, height, m[1], int(m[2] or 90), seed=len(classes))
        requests = int(counts[1]) if len(counts) == 2 else None
        params = {"scale": int(fields[3])}
        classes.append(
            TrafficClass(name=fields[0], payloads=[payload], params=params, weight=int(counts[0]), requests=requests)
        )
    if len({c.name for c in classes}) != len(classes):
        raise ValueError(f"the classes of a mix need different names: {spec!r}")
    return classes


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
    max_requests: int  # cap on requests in the step, over all classes
    params: dict = field(default_factory=dict)  # query parameters of /v1/upscale
    timeout: float = 120.0  # seconds per request
    api_key: str | None = None


Traffic = list[Payload] | list[TrafficClass]  # one class of request, or a mix


@dataclass(frozen=True)
class _Request:
    """Where and how every request of a class goes."""

    scheme: str
    host: str
    port: int | None
    target: str  # path and query of /v1/upscale
    headers: dict[str, str]
    timeout: float
    scale: int

    @classmethod
    def of(cls, server: str, options: LoadOptions, params: dict) -> _Request:
        url = urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"--server must be an http:// or https:// URL, not {server!r}")
        params = {**options.params, **params}
        target = f"{url.path.rstrip('/')}/v1/upscale" + (f"?{urlencode(params)}" if params else "")
        headers = {"X-API-Key": options.api_key} if options.api_key else {}
        return cls(url.scheme, url.hostname, url.port, target, headers, options.timeout, int(params.get("scale", 2)))

    def connect(self) -> http.client.HTTPConnection:
        """A keep-alive connection (opened on its first request)."""
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=self.timeout)


class _Mix:
    """The classes of a step, each with its request and its recorder."""

    def __init__(self, server: str, traffic: Traffic, options: LoadOptions):
        if not traffic:
            raise ValueError("no payloads to send")
        if not isinstance(traffic[0], TrafficClass):
            traffic = [TrafficClass(name="all", payloads=list(traffic))]
        self.classes: list[TrafficClass] = list(traffic)
        self.requests = [_Request.of(server, options, c.params) for c in self.classes]
        self.recorders = {c.name: _Recorder(r.scale) for c, r in zip(self.classes, self.requests, strict=True)}

    def workers(self, concurrency: int) -> list[tuple[int, int, int]]:
        """For each of ``concurrency`` workers: (its class, its place among that class's workers, their number).
        A class gets its weight's share of the workers, at least one, by largest remainder."""
        weights = [c.weight for c in self.classes]
        if concurrency < len(weights):
            raise ValueError(f"a mix of {len(weights)} classes needs a concurrency of at least {len(weights)}")
        shares = [concurrency * w / sum(weights) for w in weights]
        counts = [max(1, int(share)) for share in shares]
        while sum(counts) > concurrency:
            counts[max((k for k in range(len(counts)) if counts[k] > 1), key=lambda k: counts[k] - shares[k])] -= 1
        while sum(counts) < concurrency:
            counts[max(range(len(counts)), key=lambda k: shares[k] - counts[k])] += 1
        return [(k, j, n) for k, n in enumerate(counts) for j in range(n)]

    def sequence(self, count: int) -> list[int]:
        """The classes of ``count`` requests in an open loop, interleaved in proportion to their weights (smooth
        weighted round-robin)."""
        weights = [c.weight for c in self.classes]
        credit, order = [0] * len(weights), []
        for _ in range(count):
            credit = [c + w for c, w in zip(credit, weights, strict=True)]
            k = max(range(len(credit)), key=credit.__getitem__)
            credit[k] -= sum(weights)
            order.append(k)
        return order

    def send(self, k: int, conn: http.client.HTTPConnection, i: int) -> None:
        """Send class ``k``'s ``i``-th payload (cycling) on ``conn`` and record it."""
        payloads = self.classes[k].payloads
        self.recorders[self.classes[k].name].send(conn, self.requests[k], payloads[i % len(payloads)])

    def result(self, mode: str, level: float, seconds: float, recorders: dict[str, _Recorder] | None = None):
        """The step's overall figures and, for a mix, each class's."""
        recorders = recorders or self.recorders
        merged = _Recorder(0)
        for rec in recorders.values():
            merged.merge(rec)
        step = merged.result(mode, level, seconds)
        if len(recorders) > 1:
            step.classes = {name: asdict(rec.result(mode, level, seconds)) for name, rec in recorders.items()}
            for figures in step.classes.values():
                del figures["classes"]
        return step


def closed_loop(server: str, traffic: Traffic, concurrency: int, options: LoadOptions) -> StepResult:
    """``concurrency`` workers post back to back until ``duration`` or ``max_requests``."""
    mix = _Mix(server, traffic, options)
    seconds = _closed_workers(mix, range(concurrency), concurrency, options)
    return mix.result("closed", concurrency, seconds)


def _closed_workers(mix: _Mix, workers: range, concurrency: int, options: LoadOptions) -> float:
    """The closed loop's workers numbered ``workers`` (of ``concurrency``), one thread and connection each, recording
    into ``mix``: for how long they ran."""
    tickets = itertools.count()  # next() is atomic: no request is sent twice or over the cap
    deadline = time.perf_counter() + options.duration
    places = mix.workers(concurrency)

    def worker(number: int) -> None:
        k, i, step = places[number]
        cap = mix.classes[k].requests
        quota = len(range(i, cap, step)) if cap else None  # this worker's share of its class's requests
        conn = mix.requests[k].connect()
        try:
            sent = 0
            while time.perf_counter() < deadline and (quota is None or sent < quota):
                if next(tickets) >= options.max_requests:
                    break
                mix.send(k, conn, i)
                i, sent = i + step, sent + 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(number,), daemon=True) for number in workers]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


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

    def closed_loop(self, server: str, traffic: Traffic, concurrency: int, options: LoadOptions) -> StepResult:
        """``closed_loop``, in this process when there is one client process."""
        if self._pool is None:
            return closed_loop(server, traffic, concurrency, options)
        mix = _Mix(server, traffic, options)
        parts = [range(k, concurrency, self.processes) for k in range(min(self.processes, concurrency))]
        # Requests in proportion to each part's workers, so every worker gets about the same number.
        quotas = [options.max_requests * len(workers) // concurrency for workers in parts]
        for k in range(options.max_requests - sum(quotas)):
            quotas[k] += 1
        start = time.time() + 0.2  # every process starts its clock together
        futures = [
            self._pool.submit(
                _closed_part, server, traffic, workers, concurrency, replace(options, max_requests=quota), start
            )
            for workers, quota in zip(parts, quotas, strict=True)
        ]
        merged = {name: _Recorder(rec.scale) for name, rec in mix.recorders.items()}
        began, ended = [], []
        for future in futures:
            recorders, t0, t1 = future.result()
            for name, rec in recorders.items():
                merged[name].merge(rec)
            began.append(t0)
            ended.append(t1)
        return mix.result("closed", concurrency, max(ended) - min(began), merged)


def _closed_part(
    server: str, traffic: Traffic, workers: range, concurrency: int, options: LoadOptions, start: float
) -> tuple[dict[str, _Recorder], float, float]:
    """One client process's part of a closed loop: what it recorded per class, and when (wall clock) it began and
    ended."""
    time.sleep(max(0.0, start - time.time()))
    mix = _Mix(server, traffic, options)
    t0 = time.time()
    _closed_workers(mix, workers, concurrency, options)
    return mix.recorders, t0, time.time()


def open_loop(server: str, traffic: Traffic, rate: float, options: LoadOptions) -> StepResult:
    """Start a request every 1/``rate`` seconds for ``duration``, however slowly the service answers
    (up to ``_OPEN_LOOP_CONNECTIONS`` in flight, each thread with its own keep-alive connection per class)."""
    if rate <= 0:
        raise ValueError(f"open loop needs a rate above 0 requests/s, not {rate}")
    mix = _Mix(server, traffic, options)
    count = min(options.max_requests, max(1, int(rate * options.duration)))
    local, opened = threading.local(), []

    def send(k: int, i: int) -> None:
        conns = local.__dict__.setdefault("conns", {})
        if k not in conns:
            conns[k] = mix.requests[k].connect()
            opened.append(conns[k])
        mix.send(k, conns[k], i)

    sent = Counter()
    with ThreadPoolExecutor(_OPEN_LOOP_CONNECTIONS) as pool:
        t0 = time.perf_counter()
        for i, k in enumerate(mix.sequence(count)):
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            pool.submit(send, k, sent[k])
            sent[k] += 1
    seconds = time.perf_counter() - t0
    for conn in opened:
        conn.close()
    return mix.result("open", rate, seconds)


def write_results(results: list[StepResult], out: Path, meta: dict) -> list[Path]:
    """The steps as JSON and CSV, and their plot where matplotlib is installed; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    (out / "loadtest.json").write_text(json.dumps({"meta": meta, "steps": rows}, indent=2) + "\n")
    with open(out / "loadtest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "errors": json.dumps(r["errors"]), "classes": json.dumps(r["classes"])} for r in rows)
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
    """One line for the step, and one more for each class of a mix."""
    lines = [f"{r.mode:6} {r.level:>6g}  {_figures(asdict(r))}"]
    lines += [f"  {name:>12}  {_figures(figures)}" for name, figures in r.classes.items()]
    return "\n".join(lines)


def _figures(r: dict) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
    return (
        f"{r['requests_per_s']:7.2f} req/s  {r['output_mpix_per_s']:7.2f} MPix/s  p50 {r['p50_ms']:7.1f}  "
        f"p90 {r['p90_ms']:7.1f}  p95 {r['p95_ms']:7.1f}  p99 {r['p99_ms']:7.1f} ms  errors: {errors}"
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
    p.add_argument("--mix", help="a weighted mix of classes instead: name:size:format:scale:weight,... (see above)")
    p.add_argument("--scale", type=int, default=2, choices=(2, 3, 4))
    p.add_argument("--format", choices=("png", "jpeg", "webp"))
    p.add_argument("--processes", type=int, default=1, help="client processes sharing the closed loop's workers")
    p.add_argument("--api-key")
    p.add_argument("--out", default="loadtest-results", help="folder for JSON, CSV and plot")
    args = p.parse_args(argv)

    if args.mix:
        try:
            traffic: Traffic = parse_mix(args.mix)
        except ValueError as exc:
            p.error(str(exc))
        sent = {"mix": args.mix}
    else:
        traffic = load_payloads(args.images) if args.images else make_payloads([int(s) for s in args.sizes.split(",")])
        sent = {"payloads": [f"{p.width}x{p.height}" for p in traffic]}
    params = {"scale": args.scale, **({"format": args.format} if args.format else {})}
    options = LoadOptions(duration=args.duration, max_requests=args.max_requests, params=params, api_key=args.api_key)
    results = []
    if args.rate:
        results.append(open_loop(args.server, traffic, args.rate, options))
        log.info(_report(results[-1]))
    else:
        with ProcessLoad(args.processes) as load:
            for level in (int(c) for c in args.concurrency.split(",")):
                results.append(load.closed_loop(args.server, traffic, level, options))
                log.info(_report(results[-1]))
    meta = {"server": args.server, **sent, **params}
    written = write_results(results, Path(args.out), meta)
    log.info("wrote %s", ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
