"""Upscale many images through the service: ``upscale-batch INPUT... --out DIR [--server URL]``.

Inputs are files, folders (``--recursive`` to descend) or glob patterns; each
image's result goes to the same relative path under ``--out`` (see
``client.discovery``). Requests run concurrently (``--concurrency``) over one or
more replicas (``--server``, repeated; see ``client.balancer``), with retries
(see ``client.service_client``). Each output is written atomically (see
``client.outputs``); outputs that already exist and decode are kept unless
``--overwrite``, so running the same command again finishes an interrupted run.
The report records the settings the outputs were made with; a run with other
settings warns that the outputs it keeps were made with the earlier ones.

At the end (and on Ctrl-C) a summary line goes to stdout and a JSON report (every
failure with its reason) to ``--report``, by default ``OUT/report.json``. Exit
status: 0 when every image was done or kept, 1 when any failed, 2 for a usage
error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from client.balancer import Balancer
from client.discovery import OUTPUT_FORMATS, InputError, Job, plan
from client.outputs import is_complete, remove_stale_parts, write_atomically
from client.service_client import ServiceClient, Unauthorized, UpscaleFailed

__all__ = ["BatchOptions", "BatchReport", "Failure", "main", "upscale_batch"]

log = logging.getLogger("client.batch")

DEFAULT_SERVER = "http://127.0.0.1:8000"  # where ``make serve`` listens


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """What to upscale, where to, and how; validated on creation (ValueError)."""

    inputs: Sequence[str]
    out: Path
    servers: Sequence[str]
    scale: float | None = None  # None: 2 unless width or height is given; (1, 4]
    width: int | None = None  # the results' width; alone, the height follows each image's aspect ratio
    height: int | None = None
    fit: str = "contain"  # with width and height: contain, cover or fill (the service's meanings)
    format: str | None = None  # None: the input's format where the service writes it, else png
    quality: int | None = None  # None: the server's default
    model: str | None = None  # None: the server's default
    concurrency: int = 4
    recursive: bool = False
    api_key: str | None = None
    report: Path | None = None  # None: out / "report.json"
    overwrite: bool = False
    retries: int = 8
    timeout: float = 300.0  # seconds, per request
    backoff: float = 0.5  # seconds before the first retry of a file; doubles each retry

    def __post_init__(self) -> None:
        problems = [
            "at least one INPUT is needed" if not self.inputs else None,
            "at least one --server is needed" if not self.servers else None,
            *(_url_problem(url) for url in self.servers),
            "--scale must be above 1 and at most 4" if self.scale is not None and not 1 < self.scale <= 4 else None,
            "--scale and --width/--height exclude each other"
            if self.scale is not None and (self.width or self.height)
            else None,
            "--width and --height must be at least 1"
            if any(v is not None and v < 1 for v in (self.width, self.height))
            else None,
            "--fit must be contain, cover or fill" if self.fit not in ("contain", "cover", "fill") else None,
            "--format must be png, jpeg, webp or avif" if self.format not in (None, *OUTPUT_FORMATS) else None,
            "--quality must be 1 to 100" if self.quality is not None and not 1 <= self.quality <= 100 else None,
            "--concurrency must be at least 1" if self.concurrency < 1 else None,
            "--retries must be 0 or more" if self.retries < 0 else None,
            "--timeout must be more than 0" if self.timeout <= 0 else None,
            "backoff must be 0 or more" if self.backoff < 0 else None,
            f"--out {self.out} is not a folder" if self.out.exists() and not self.out.is_dir() else None,
        ]
        if any(problems):
            raise ValueError("; ".join(p for p in problems if p))

    @property
    def report_path(self) -> Path:
        return self.report or self.out / "report.json"

    def settings(self) -> dict[str, str | int | None]:
        """What the outputs depend on, recorded in the report."""
        size = {"scale": self.scale or (None if self.width or self.height else 2), "width": self.width}
        size |= {"height": self.height, "fit": self.fit if self.width and self.height else None}
        return {**size, "format": self.format, "model": self.model, "quality": self.quality}

    def query(self) -> dict[str, str]:
        """The query parameters every request carries (the format is per file)."""
        extra = {k: v for k, v in self.settings().items() if k != "format"}
        return {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in extra.items() if v is not None}


def _url_problem(url: str) -> str | None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return f"--server {url!r} is not a URL"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return f"--server {url!r} is not an http(s)://host[:port] URL"
    return None


@dataclass(frozen=True)
class Failure:
    """An image that was not upscaled, and why."""

    input: str
    output: str | None
    reason: str
    status: int | None = None  # the service's HTTP status, when it answered
    code: str | None = None  # the service's error code, when it sent one
    attempts: int = 0


@dataclass
class BatchReport:
    """What a run did; ``to_json`` is the report file's content."""

    servers: list[str]
    settings: dict = field(default_factory=dict)  # what the outputs were made with (BatchOptions.settings)
    done: int = 0
    skipped: int = 0  # outputs that existed and decode, kept
    not_attempted: int = 0  # images left when the run stopped early
    retries: int = 0  # attempts after the first, over all images
    errors: dict[str, int] = field(default_factory=dict)  # failed attempts by cause ("503", "ConnectError")
    seconds: float = 0.0
    output_pixels: int = 0
    aborted: str | None = None  # why the run stopped early
    failures: list[Failure] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files that are not images
    models: dict[str, str] = field(default_factory=dict)  # input -> the model that ran it (model=auto chooses per file)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def mpix_per_s(self) -> float:
        return self.output_pixels / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and not self.not_attempted

    def to_json(self) -> str:
        counts = {k: getattr(self, k) for k in ("done", "skipped", "failed", "not_attempted", "retries")}
        body = {
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "servers": self.servers,
            "settings": self.settings,
            **counts,
            "ignored": len(self.ignored),
            "seconds": round(self.seconds, 3),
            "output_megapixels": round(self.output_pixels / 1e6, 3),
            "megapixels_per_second": round(self.mpix_per_s, 3),
            "aborted": self.aborted,
            "errors": dict(sorted(self.errors.items())),
            "models_used": dict(sorted(Counter(self.models.values()).items())),
            "model_per_input": dict(sorted(self.models.items())),
            "failures": [asdict(f) for f in sorted(self.failures, key=lambda f: f.input)],
            "ignored_files": self.ignored,
        }
        return json.dumps(body, indent=2) + "\n"

    def summary(self) -> str:
        line = (
            f"done {self.done}, skipped {self.skipped}, failed {self.failed} "
            f"in {self.seconds:.1f} s ({self.mpix_per_s:.2f} MPix/s)"
        )
        if self.ignored:
            line += f"; {len(self.ignored)} non-image file(s) ignored"
        if self.aborted:
            line += f"; stopped early, {self.not_attempted} image(s) not attempted: {self.aborted}"
        return line


async def upscale_batch(options: BatchOptions, *, transport: httpx.AsyncBaseTransport | None = None) -> BatchReport:
    """Run a batch and write its report; raises InputError when an INPUT matches nothing.

    ``transport`` replaces the network (tests pass an ``httpx.MockTransport``).
    """
    started = time.monotonic()
    found = plan(options.inputs, out=options.out, fmt=options.format, recursive=options.recursive)
    report = BatchReport(
        servers=list(options.servers),
        settings=options.settings(),
        failures=[Failure(str(r.source), str(r.target) if r.target else None, r.reason) for r in found.refused],
        ignored=[str(p) for p in found.ignored],
    )
    if not options.overwrite:
        _warn_if_made_otherwise(options)
    folders = {job.target.parent for job in found.jobs} | {options.report_path.parent}
    removed = await asyncio.to_thread(remove_stale_parts, folders)
    if removed:
        log.info("removed %d unfinished temporary file(s) left by an earlier run", removed)
    headers = {"X-API-Key": options.api_key} if options.api_key else {}
    limits = httpx.Limits(max_connections=options.concurrency * 2, max_keepalive_connections=options.concurrency)
    async with httpx.AsyncClient(transport=transport, timeout=options.timeout, headers=headers, limits=limits) as http:
        balancer = Balancer(options.servers, base_rest=options.backoff)
        service = ServiceClient(
            http, balancer, params=options.query(), retries=options.retries, backoff=options.backoff
        )
        bar = tqdm(total=len(found.jobs), unit="img", disable=None, dynamic_ncols=True)  # shown on a terminal
        try:
            with bar, logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext():
                run = _Run(options, service, report, bar, started)
                jobs = iter(found.jobs)  # shared by the workers: each takes the next job when it is free
                await asyncio.gather(*(run.work(jobs) for _ in range(options.concurrency)))
        except asyncio.CancelledError:  # Ctrl-C: what was done so far is reported, then the run stops
            report.aborted = "interrupted"
            report.not_attempted = len(found.jobs) - report.done - report.skipped - (report.failed - len(found.refused))
            raise
        finally:
            report.retries = service.retried
            report.errors = dict(service.errors)
            report.seconds = time.monotonic() - started
            write_atomically(options.report_path, report.to_json().encode())
    return report


def _warn_if_made_otherwise(options: BatchOptions) -> None:
    """Outputs that exist are kept; say so when the last run made them with other settings."""
    try:
        earlier = json.loads(options.report_path.read_text()).get("settings")
    except (OSError, ValueError):
        return
    now = options.settings()
    if isinstance(earlier, dict) and earlier != now:
        differ = ", ".join(f"{k} {earlier.get(k)} (now {v})" for k, v in now.items() if earlier.get(k) != v)
        log.warning(
            "outputs kept from the last run in %s were made with %s; --overwrite makes them again", options.out, differ
        )


class _Run:
    """The state the workers of one batch share."""

    def __init__(self, options: BatchOptions, service: ServiceClient, report: BatchReport, bar: tqdm, started: float):
        self.options, self.service, self.report, self.bar, self.started = options, service, report, bar, started

    async def work(self, jobs: Iterator[Job]) -> None:
        for job in jobs:
            if self.report.aborted:
                self.report.not_attempted += 1
            else:
                await self._one(job)
            self.bar.update()

    async def _one(self, job: Job) -> None:
        if not self.options.overwrite and await asyncio.to_thread(is_complete, job.target):
            self.report.skipped += 1
            return
        try:
            data = await asyncio.to_thread(job.source.read_bytes)
        except OSError as exc:
            return self._fail(job, f"the input could not be read: {exc.strerror or exc}")
        try:
            result = await self.service.upscale(data, job.media_type, job.fmt)
        except UpscaleFailed as exc:
            if isinstance(exc, Unauthorized) and not self.report.aborted:
                self.report.aborted = f"the server refused the API key ({exc.reason})"
            return self._fail(job, exc.reason, status=exc.status, code=exc.code, attempts=exc.attempts)
        try:
            await asyncio.to_thread(write_atomically, job.target, result.body)
        except OSError as exc:
            return self._fail(job, f"the output could not be written: {exc.strerror or exc}", attempts=result.attempts)
        self.report.done += 1
        if result.model:
            self.report.models[str(job.source)] = result.model
        self.report.output_pixels += result.width * result.height
        mpix_per_s = self.report.output_pixels / 1e6 / max(time.monotonic() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{mpix_per_s:.2f} MPix/s", refresh=False)

    def _fail(self, job: Job, reason: str, **details) -> None:
        log.warning("failed: %s: %s", job.source, reason)
        self.report.failures.append(Failure(str(job.source), str(job.target), reason, **details))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="upscale-batch",
        description="Upscale image files, folders and glob patterns through the upscaling service.",
        epilog="Exit status: 0 when every image was done or kept, 1 when any failed, 2 for a usage error.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, or quoted glob patterns")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="where the outputs go")
    p.add_argument(
        "--server",
        dest="servers",
        action="append",
        metavar="URL",
        help=f"the service (default: {DEFAULT_SERVER}); repeat to spread the load over replicas",
    )
    size = p.add_argument_group("size (default: x2)")
    size.add_argument("--scale", type=float, metavar="S", help="a factor above 1 and at most 4, e.g. 1.5")
    size.add_argument("--width", type=int, metavar="PX", help="the results' width (alone: keep each aspect ratio)")
    size.add_argument("--height", type=int, metavar="PX", help="the results' height (alone: keep each aspect ratio)")
    size.add_argument(
        "--fit",
        choices=("contain", "cover", "fill"),
        default="contain",
        help="with both: contain (within both, default), cover (fill both, crop evenly), fill (stretch)",
    )
    p.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        help="default: the input's if png, jpeg, webp or avif; jpeg for HEIC; else png",
    )
    p.add_argument("--quality", type=int, metavar="Q", help="JPEG/WebP/AVIF quality 1-100 (default: the server's)")
    p.add_argument("--model", metavar="M", help="model variant (default: the server's)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N", help="requests in flight (default: %(default)s)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into the sub-folders of folder INPUTs")
    p.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("UPSCALER_API_KEY"),
        help="sent as X-API-Key (default: $UPSCALER_API_KEY)",
    )
    p.add_argument("--report", type=Path, metavar="PATH", help="the JSON report (default: DIR/report.json)")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", dest="overwrite", action="store_false", help="keep outputs that exist and decode (the default)"
    )
    again.add_argument("--overwrite", dest="overwrite", action="store_true", help="make every output again")
    p.set_defaults(overwrite=False)  # not left to the two actions, whose own defaults disagree
    p.add_argument(
        "--retries", type=int, default=8, metavar="N", help="further attempts per image (default: %(default)s)"
    )
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="per request (default: %(default)s s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    args.servers = args.servers or [DEFAULT_SERVER]
    try:
        options = BatchOptions(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        report = asyncio.run(upscale_batch(options))
    except InputError as exc:
        parser.error(str(exc))
    except KeyboardInterrupt:
        print(f"interrupted; report: {options.report_path}; run the same command again to finish", file=sys.stderr)
        return 130
    print(f"{report.summary()}; report: {options.report_path}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
