"""Where a request's CPU goes: CPU time and page faults per request, by server thread, under load.

    python -m bench.threads [--size 512] [--concurrency 8] [--duration 20] [--quick]

Starts the service (one process) on 127.0.0.1, warms it up with a short closed
loop, then reads every server thread's user and system CPU time and minor page
faults from /proc before and after a closed loop of ``--duration`` seconds
(x2, PNG in, PNG out). Threads are grouped by their OS name, which the service
gives its pools (``service.host.name_os_thread``): ``engine`` (the network, and
on a CPU cutting and placing tiles), ``codec`` (decoding and encoding),
``tiles`` (cutting and placing float results) and the main thread (the event
loop: HTTP, routing, batching). The load generator's own CPU is reported beside
them, since it shares the machine. The figures of interest are ratios within
one run: the share of a request's CPU spent outside the network. Linux only.
Writes bench/results/threads.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.machine import write_result
from bench.serving import free_port, running
from client.loadtest import LoadOptions, closed_loop, make_payloads

_TICKS = os.sysconf("SC_CLK_TCK")


def thread_counters(pid: int) -> dict[int, tuple[str, float, float, int]]:
    """For each thread of ``pid``: (name, user seconds, system seconds, minor page faults)."""
    counters = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended
            continue
        tid = int(task.name)
        # stat fields 10 (minflt), 14 (utime), 15 (stime), counted from the state (field 3) at index 0
        counters[tid] = (
            "main" if tid == pid else name,
            int(fields[11]) / _TICKS,
            int(fields[12]) / _TICKS,
            int(fields[7]),
        )
    return counters


def per_request(before: dict, after: dict, requests: int) -> dict[str, dict[str, float]]:
    """CPU milliseconds (user, system) and minor faults per request, summed over threads of the same pool."""
    groups: dict[str, dict[str, float]] = {}
    for tid, (name, user, system, faults) in after.items():
        _, user0, system0, faults0 = before.get(tid, (name, 0.0, 0.0, 0))
        group = groups.setdefault(
            name.rstrip("0123456789").rstrip("_") or name, dict.fromkeys(("user_ms", "system_ms", "faults"), 0.0)
        )
        group["user_ms"] += (user - user0) * 1000 / requests
        group["system_ms"] += (system - system0) * 1000 / requests
        group["faults"] += (faults - faults0) / requests
    rounded = {k: {m: round(v, 2) for m, v in g.items()} for k, g in sorted(groups.items())}
    return {k: g for k, g in rounded.items() if any(g.values())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny image, short loop, no result file")
    args = p.parse_args(argv)
    size, duration = (64, 2.0) if args.quick else (args.size, args.duration)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"UPSCALER_PORT": str(port), "UPSCALER_LOG_LEVEL": "warning", "UPSCALER_PROCESSES": "1"}
    payloads = make_payloads([size])
    with running([sys.executable, "-m", "service"], env, url) as proc:
        closed_loop(url, payloads, args.concurrency, LoadOptions(duration=min(4.0, duration), max_requests=10**6))
        before, client_before = thread_counters(proc.pid), os.times()
        step = closed_loop(url, payloads, args.concurrency, LoadOptions(duration=duration, max_requests=10**6))
        after, client_after = thread_counters(proc.pid), os.times()
    if step.errors or not step.ok:
        raise SystemExit(f"the load failed: {step.errors or 'no request succeeded'}")
    threads = per_request(before, after, step.ok)
    cpu = {name: g["user_ms"] + g["system_ms"] for name, g in threads.items()}
    client = (client_after.user + client_after.system - client_before.user - client_before.system) * 1000 / step.ok
    result = {
        "image": f"{size}x{size} PNG -> x2 PNG",
        "concurrency": args.concurrency,
        "seconds": step.seconds,
        "requests": step.ok,
        "output_mpix_per_s": step.output_mpix_per_s,
        "threads_per_request": threads,
        "server_cpu_ms_per_request": round(sum(cpu.values()), 2),
        "outside_engine_share": round(1 - cpu.get("engine", 0) / sum(cpu.values()), 4),
        "load_generator_cpu_ms_per_request": round(client, 2),
    }
    for name, g in threads.items():
        print(f"{name:8} user {g['user_ms']:7.2f} ms  system {g['system_ms']:6.2f} ms  {g['faults']:7.0f} faults")
    print(
        f"{step.ok} requests, {step.output_mpix_per_s:.2f} output MPix/s; outside the engine threads: "
        f"{result['outside_engine_share']:.1%} of {result['server_cpu_ms_per_request']:.0f} ms; "
        f"load generator {client:.1f} ms (all per request)"
    )
    if not args.quick:
        print("wrote", write_result("threads", result))


if __name__ == "__main__":
    main()
