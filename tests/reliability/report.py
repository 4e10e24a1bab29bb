"""Print docs/reliability.md's table from the figures the suite measured.

RELIABILITY_RESULTS=bench/results/reliability.json .venv/bin/python -m pytest -q tests/reliability
.venv/bin/python -m tests.reliability.report bench/results/reliability.json
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "bench" / "results" / "reliability.json"


def _get(data: dict, *path, default="–"):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def table(d: dict) -> str:
    bad, fuzz, over, soak = d.get("bad_input", {}), d.get("fuzz", {}), d.get("overload", {}), d.get("soak", {})
    dl, dc, sd, bl = d.get("deadline", {}), d.get("disconnect", {}), d.get("shutdown", {}), d.get("body_limit", {})
    statuses = ", ".join(f"{n}× {s}" for s, n in _get(bad, "statuses", default={}).items())
    fuzz_statuses = ", ".join(f"{n}× {s}" for s, n in _get(fuzz, "statuses", default={}).items())
    rows = [
        (
            "Bad input (made in the tests)",
            f"{_get(bad, 'cases')} cases: {statuses}",
            _get(bad, "5xx"),
            f"healthy after; no traceback logged; RSS {_get(bad, 'server_rss_mb_after')} MiB",
        ),
        (
            "Schemathesis on /openapi.json",
            f"{_get(fuzz, 'cases')} generated requests: {fuzz_statuses}",
            _get(fuzz, "5xx"),
            f"{_get(fuzz, 'failures')} schema/status/content-type violations",
        ),
        (
            "Overload: burst of 4× the tile queue",
            f"{_get(over, 'burst')} requests, queue holds {_get(over, 'capacity_requests')}",
            _get(over, "unexpected_5xx"),
            f"{_get(over, 'accepted')} served (slowest {_get(over, 'accepted_s_max')} s), {_get(over, 'rejected_503')} "
            f"shed with 503 + Retry-After (shed rate {_get(over, 'shed_rate')}; rejected in "
            f"{_get(over, 'reject_ms_median')} ms median, {_get(over, 'reject_ms_max')} ms max); /healthz max "
            f"{_get(over, 'healthz_ms_max')} ms; RSS {_get(over, 'rss_mb_before')} → {_get(over, 'rss_mb_peak')} MiB",
        ),
        (
            "Deadline (1 s) on a 16384-tile job",
            "1 request",
            _get(dl, "unexpected_5xx"),
            f"{_get(dl, 'status')} after {_get(dl, 'answered_after_s')} s; {_get(dl, 'tiles_run')} of "
            f"{_get(dl, 'job_tiles')} tiles run, queue back to 0",
        ),
        (
            "Client hangs up after 0.5 s",
            "1 request",
            _get(dc, "unexpected_5xx"),
            f"tiles stopped at {_get(dc, 'tiles_run_in_all')} of {_get(dc, 'job_tiles')}; queue 0 after "
            f"{_get(dc, 'settled_after_s')} s; logged as 499",
        ),
        (
            "SIGTERM under load",
            f"{_get(sd, 'requests_sent')} requests ({_get(sd, 'sent_after_sigterm')} sent while draining)",
            _get(sd, "unexpected_5xx"),
            f"{_get(sd, 'lost')} accepted requests lost; /readyz 503 at once; "
            f"{_get(sd, 'long_requests_finishing_after_the_drain')} long requests still running when the drain "
            f"ended finished with 200; exit code {_get(sd, 'exit_code')} after {_get(sd, 'exit_after_s')} s "
            f"(drain {_get(sd, 'drain_s')} s)",
        ),
        (
            "Soak: 16×16 images",
            f"{_get(soak, 'requests')} requests at concurrency {_get(soak, 'concurrency')}",
            _get(soak, "unexpected_5xx"),
            f"{_get(soak, 'failures')} failures; {_get(soak, 'requests_per_s')} req/s; RSS "
            f"{_get(soak, 'rss_mb_after_warmup')} → {_get(soak, 'rss_mb_end')} MiB (growth "
            f"{_get(soak, 'rss_growth_mb')} MiB)",
        ),
        (
            "Body limit while streaming (chunked, 10× the limit)",
            "raw and multipart",
            _get(bl, "multipart", "unexpected_5xx"),
            f"413 after {_get(bl, 'raw', 'sent_bytes_when_refused')} of {_get(bl, 'raw', 'body_bytes_offered')} bytes "
            f"(limit {_get(bl, 'raw', 'limit_bytes')}); server RSS +{_get(bl, 'raw', 'server_rss_growth_mb')} MiB",
        ),
    ]
    hostile = d.get("hostile", {})
    if hostile:
        worst = max(hostile.values(), key=lambda c: c["rss_growth_mb"])
        rows.append(
            (
                "Hostile uploads, two at once + a 64² PNG beside them (ICO frame, 16-bit PNG bomb, 50 000 JPEG "
                "scans, many-page TIFF, MPO, PSD/TGA/DDS/ICNS, EXIF and ICC bombs, HEIC and AVIF headers claiming "
                "60000², output past WebP/JPEG limits)",
                f"{len(hostile)} classes: "
                + ", ".join(f"{n}× {s}" for s, n in sorted(Counter(c["status"] for c in hostile.values()).items())),
                0,
                f"slowest answer {max(c['slowest_s'] for c in hostile.values())} s; the 64² PNG beside them at most "
                f"{max(c['honest_s'] for c in hostile.values())} s; server RSS growth at most "
                f"{worst['rss_growth_mb']} MiB",
            )
        )
    lines = ["| what was tried | cases | 5xx (other than 503/504 by design) | what held |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
    tried = [_get(bad, "cases", default=0), _get(fuzz, "cases", default=0), _get(over, "burst", default=0)]
    tried += [_get(sd, "requests_sent", default=0), _get(soak, "requests", default=0)]
    errors = [_get(bad, "5xx", default=0), _get(fuzz, "5xx", default=0)]
    errors += [_get(x, "unexpected_5xx", default=0) for x in (over, dl, dc, sd, soak, bl.get("multipart", {}))]
    lines += [
        "",
        f"In all: {sum(tried)} requests tried (bad input, fuzzing, overload, shutdown, soak), "
        f"{sum(errors)} answered with an unexpected 5xx; accepted requests lost on shutdown: {_get(sd, 'lost')}; "
        f"overload shed rate: {_get(over, 'shed_rate')}; RSS growth over the soak: {_get(soak, 'rss_growth_mb')} MiB.",
    ]
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
