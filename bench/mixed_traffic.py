"""Mixed traffic: small requests beside big ones of other models and scales, under each batch scheduler.

    python -m bench.mixed_traffic [--duration 30] [--rounds 2] [--quick]

Starts the real service on 127.0.0.1 once per scheduler (``UPSCALER_SCHEDULING``: ``by-model``, the older rule,
and ``fair``, the default), ``--rounds`` times each, alternating, and in each run measures:

- **a small request behind a big one**: a 4000x3000 photo (JPEG q90 at x4, PNG at x4, PNG at x2; the model ``auto``
  picks) is sent, and one second later a 256x256 PNG at x2. Recorded: the small request's latency and queue time
  (its Server-Timing), whether the big one was still running when the small one was answered, and the big one's
  status and latency.
- **a mix** (``--mix``, client.loadtest's format): many small web-page requests beside a few large batch uploads
  of another model and scale, in client.loadtest's closed loop for ``--duration`` seconds. Each class is also run
  alone with the workers it had in the mix, so that each class's p50/p99 in the mix can be set against the same
  class alone. How many requests of each class a scheduler serves in that time is its choice (the older rule
  serves the big class first), so the mix's output MPix/s also measures what it chose to serve.
- **the same work**: the mix again, each class stopping after a fixed number of requests (``--work``), so that
  both schedulers serve the same requests: its output MPix/s (the work over the time it took) is the throughput
  that the two can be held to.

Writes bench/results/mixed-traffic.json (with the machine it ran on). No figure here is a test's assertion.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import threading
import time
from dataclasses import asdict, replace

from bench.machine import write_result
from bench.serving import free_port, running
from client.loadtest import LoadOptions, Payload, TrafficClass, closed_loop, make_payload, parse_mix

SCHEDULERS = ("by-model", "fair")  # the older rule first: every run of the new one is compared with it
DEFAULT_MIX = "web:256:png:2:4,batch:1600x1200:jpeg90:4:1"
DEFAULT_WORK = "1000,20"  # requests of each class in the same-work step: about 30 s on a 2-core EPYC
BIG_CASES = (("jpeg90", 4), ("png", 4), ("png", 2))  # the big photo's format and scale, as the check sends


def post(url: str, payload: Payload, scale: int, timeout: float = 600) -> dict:
    """One upscale: status, seconds, Server-Timing's phases (ms) and the model that ran."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request(
            "POST", f"/v1/upscale?scale={scale}", body=payload.data, headers={"Content-Type": payload.content_type}
        )
        response = conn.getresponse()
        response.read()
        seconds = time.perf_counter() - t0
        timing = dict(
            (part.split(";dur=")[0].strip(), float(part.split(";dur=")[1]))
            for part in (response.getheader("Server-Timing") or "").split(",")
            if ";dur=" in part
        )
        return {
            "status": response.status,
            "seconds": round(seconds, 3),
            "server_timing_ms": timing,
            "model": response.getheader("X-Model"),
        }
    finally:
        conn.close()


def small_behind_big(url: str, big: Payload, big_scale: int, small: Payload, delay: float = 1.0) -> dict:
    """Send ``big``, then ``small`` at x2 ``delay`` seconds later: both outcomes, and whether the big one was
    still running when the small one was answered."""
    outcome: dict = {}
    sender = threading.Thread(target=lambda: outcome.update(post(url, big, big_scale)))
    sender.start()
    time.sleep(delay)
    small_result = post(url, small, 2)
    big_running = sender.is_alive()
    sender.join()
    return {"small": small_result, "big": outcome, "big_still_running_when_small_answered": big_running}


def mix_and_alone(url: str, classes: list[TrafficClass], work: list[int], options: LoadOptions) -> dict:
    """The mix in the closed loop at the sum of its weights, then each class alone with the workers it had, then
    the same work (``work`` requests of each class) mixed."""
    concurrency = sum(c.weight for c in classes)
    mixed = closed_loop(url, classes, concurrency, options)
    alone = {c.name: asdict(closed_loop(url, [c], c.weight, options)) for c in classes}
    fixed = [replace(c, requests=n) for c, n in zip(classes, work, strict=True)]
    same_work = closed_loop(url, fixed, concurrency, replace(options, duration=3600))
    return {"mix": asdict(mixed), "alone": alone, "same_work": asdict(same_work)}


def run_once(
    scheduling: str, classes: list[TrafficClass], work: list[int], bigs: dict, small: Payload, options: LoadOptions
) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"UPSCALER_PORT": str(port), "UPSCALER_SCHEDULING": scheduling, "UPSCALER_LOG_LEVEL": "warning"}
    with running([sys.executable, "-m", "service"], env, url):
        post(url, small, 2)  # one request before any figure: first-use costs (allocator, codecs) out of the way
        scenarios = {name: small_behind_big(url, payload, scale, small) for name, (payload, scale) in bigs.items()}
        load = mix_and_alone(url, classes, work, options)
    return {"scheduling": scheduling, "small_behind_big": scenarios, **load}


def summary(runs: list[dict], classes: list[TrafficClass]) -> dict:
    """Per scheduler: the small request's worst latency behind each big one, and each class's p50/p99 in the mix
    over alone (medians over rounds); the fair scheduler's mix throughput over the older one's, per round."""
    out: dict = {}
    for scheduling in SCHEDULERS:
        mine = [r for r in runs if r["scheduling"] == scheduling]
        out[scheduling] = {
            "small_behind_big_worst_seconds": {
                case: max(r["small_behind_big"][case]["small"]["seconds"] for r in mine)
                for case in mine[0]["small_behind_big"]
            },
            "mix_output_mpix_per_s": statistics.median(r["mix"]["output_mpix_per_s"] for r in mine),
            "same_work_output_mpix_per_s": statistics.median(r["same_work"]["output_mpix_per_s"] for r in mine),
            "same_work_seconds": statistics.median(r["same_work"]["seconds"] for r in mine),
            "per_class": {c.name: _class_figures(mine, c.name) for c in classes},
        }
    pairs = list(zip(runs[::2], runs[1::2], strict=True))  # (by-model, fair) of each round
    for step in ("same_work", "mix"):
        ratios = [fair[step]["output_mpix_per_s"] / old[step]["output_mpix_per_s"] for old, fair in pairs]
        out[f"fair_over_by_model_{step}_throughput"] = {"median": statistics.median(ratios), "per_round": ratios}
    return out


def _class_figures(runs: list[dict], name: str) -> dict:
    """One class's p50 and p99 in the mix and alone, and mix over alone: medians over ``runs``."""
    out = {}
    for q in ("p50", "p99"):
        mix = [r["mix"]["classes"][name][f"{q}_ms"] for r in runs]
        alone = [r["alone"][name][f"{q}_ms"] for r in runs]
        out[f"{q}_mix_over_alone"] = statistics.median(m / a for m, a in zip(mix, alone, strict=True))
        out[f"{q}_ms_mix"], out[f"{q}_ms_alone"] = statistics.median(mix), statistics.median(alone)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run it; returns what it wrote (or, with --quick, would have written)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mix", default=DEFAULT_MIX, help="classes and weights (default: %(default)s)")
    p.add_argument("--work", default=DEFAULT_WORK, help="requests of each class in the same-work step")
    p.add_argument("--duration", type=float, default=30, help="seconds per closed-loop step")
    p.add_argument("--rounds", type=int, default=2, help="runs of each scheduler, alternating")
    p.add_argument("--quick", action="store_true", help="smoke run: small images, short steps, no result file")
    args = p.parse_args(argv)
    width, height = (400, 300) if args.quick else (4000, 3000)
    classes = parse_mix("web:64:png:2:2,batch:200x150:jpeg90:4:1" if args.quick else args.mix)
    work = [4, 2] if args.quick else [int(n) for n in args.work.split(",")]
    options = LoadOptions(duration=2 if args.quick else args.duration, max_requests=10**6)
    small = make_payload(256, 256, "png", seed=7)
    big_images = {fmt: make_payload(width, height, fmt.rstrip("0123456789"), 90) for fmt in {f for f, _ in BIG_CASES}}
    bigs = {f"{width}x{height} {fmt} x{scale}": (big_images[fmt], scale) for fmt, scale in BIG_CASES}
    runs = []
    for round_ in range(1 if args.quick else args.rounds):
        for scheduling in SCHEDULERS:
            runs.append({"round": round_ + 1, **run_once(scheduling, classes, work, bigs, small, options)})
            case = runs[-1]["small_behind_big"]
            print(scheduling, {k: v["small"]["seconds"] for k, v in case.items()}, flush=True)
    result = {
        "what": "a 256x256 PNG at x2 sent 1 s after a big photo; and a closed-loop mix against each class alone, "
        "under each batch scheduler (UPSCALER_SCHEDULING), default settings otherwise",
        "mix": args.mix,
        "same_work_requests": dict(zip((c.name for c in classes), work, strict=True)),
        "duration_s": options.duration,
        "summary": summary(runs, classes),
        "runs": runs,
    }
    if not args.quick:
        print(write_result("mixed-traffic", result))
    return result


if __name__ == "__main__":
    main()
