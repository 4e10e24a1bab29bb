"""Two replicas behind the load balancer, under faults, through ``docker compose`` (make docker-faults).

docker-compose.yml with the CPU override, two replicas, and the load balancer of deploy/faults/ (a stand-in for
Traefik with its routing rule: only replicas whose /readyz answers 200, probed every 2 s). The batch client pushes a
folder of a few hundred images made here (PNG and JPEG, Pillow's encoders) through the balancer while

  (a) one replica's server is SIGKILLed (Docker's restart policy brings it back), then
  (b) the other is stopped with SIGTERM (docker stop: it drains) and started again.

Checked: every input has exactly one output, complete and decodable, of the right size; the client needed no
failure; the balancer stopped routing to the killed replica within one probe interval and its timeout (plus a
second); no request routed during the drain failed; the drained replica exited 0. The figures (retries, the
client's errors, the times) go to UPSCALER_FAULTS_RESULTS (make docker-faults: bench/results/replicas-under-faults.json)
or, without it, into the test's temporary folder.

deploy/docker-faults.sh starts the engine, builds the images and runs this file with UPSCALER_FAULTS_ENGINE=1; any
other run skips it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, child_env

pytestmark = pytest.mark.skipif(
    os.environ.get("UPSCALER_FAULTS_ENGINE") != "1",
    reason="needs a Docker engine and the images deploy/docker-faults.sh builds: make docker-faults (.ci/run runs it)",
)

PROJECT = "upscaler-faults"
PORT = int(os.environ.get("UPSCALER_FAULTS_PORT", "18090"))
IMAGES = int(os.environ.get("UPSCALER_FAULTS_IMAGES", "600"))
SCALE = 4
CPUS_PER_REPLICA = 1  # two replicas on this 2-core machine's cores, with the client and the balancer beside them
CONCURRENCY = 4
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cpu.yml", "deploy/faults/compose.yml"]
CHECK_INTERVAL_S, CHECK_TIMEOUT_S = 2.0, 1.0  # deploy/faults/haproxy.cfg, as docker-compose.yml's Traefik labels
SERVER_LINE = re.compile(r"Server upscaler/(\S+) is (UP|DOWN|going DOWN for maintenance)")
ATTEMPT_LINE = re.compile(r"^(\d+\.\d+) client\.service_client DEBUG: attempt \d+ failed \((\S+)", re.M)
REQUEST_LINE = re.compile(r"\breq (\d+\.\d+) (\S+) (\S+) (-?\d+) (-?\d+) ")  # deploy/faults/haproxy.cfg


def compose_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPSCALER_", "COMPOSE_"))}
    return env | {
        "UPSCALER_VERSION": "faults",  # the image deploy/docker-faults.sh built: upscaler:faults-cpu
        "UPSCALER_PUBLISH_PORT": f"127.0.0.1:{PORT}",
        "UPSCALER_REPLICAS": "2",
        "UPSCALER_CPUS": str(CPUS_PER_REPLICA),
    }


def compose(*args: str, timeout: float = 300) -> str:
    exe = shutil.which("docker-compose", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    files = [a for f in COMPOSE_FILES for a in ("-f", f)]
    done = subprocess.run(
        [exe, "-p", PROJECT, *files, *args],
        cwd=ROOT,
        env=compose_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"docker compose {' '.join(args)}: {done.stderr}"
    return done.stdout


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def inspect(container: str, template: str) -> str:
    return docker("inspect", "--format", template, container)


def ip_of(container: str) -> str:
    return inspect(container, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")


def stamp(docker_time: str) -> float:
    """Unix seconds from a ``docker logs --timestamps`` stamp (RFC 3339, nanoseconds)."""
    day, frac = docker_time.rstrip("Z").split(".")
    return datetime.fromisoformat(f"{day}.{frac[:6]}+00:00").timestamp()


class Balancer:
    """What the balancer's log says: each request (accept time, replica, status) and each change of a replica."""

    def __init__(self, container: str):
        self.container = container

    def log(self) -> str:
        done = subprocess.run(["docker", "logs", "--timestamps", self.container], capture_output=True, text=True)
        return done.stdout + done.stderr

    def read(self) -> tuple[list[dict], list[dict]]:
        requests, changes = [], []
        for line in self.log().splitlines():
            when, _, text = line.partition(" ")
            if m := REQUEST_LINE.search(text):
                accepted, server, ip, status, total_ms = m[1], m[2], m[3], int(m[4]), int(m[5])
                request = {"at": float(accepted), "server": server, "ip": ip, "status": status, "total_ms": total_ms}
                requests.append(request | {"line": text[m.start() :]})
            elif m := SERVER_LINE.search(text):
                changes.append({"at": stamp(when), "server": m[1], "state": "UP" if m[2] == "UP" else "DOWN"})
        return requests, changes

    def server_at(self, ip: str) -> str:
        """The balancer's name for the replica at ``ip`` (from the requests it sent there)."""
        names = {r["server"] for r in self.read()[0] if r["ip"] == ip}
        assert len(names) == 1, f"no single balancer server for {ip}: {names}"
        return names.pop()

    def wait_for(self, server: str, state: str, after: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            changes = [c for c in self.read()[1] if c["server"] == server and c["state"] == state and c["at"] >= after]
            if changes:  # the same change may be both logged and warned about (stdout, stderr): the first
                return min(c["at"] for c in changes)
            time.sleep(0.2)
        raise AssertionError(f"the balancer did not mark {server} {state} within {timeout} s")


def make_inputs(folder: Path, count: int) -> dict[Path, tuple[int, int]]:
    """``count`` small photos-like images, PNG and JPEG in turn, of varied sizes: relative path -> (width, height)."""
    rng = np.random.default_rng(34)
    sizes = {}
    for i in range(count):
        w, h = int(rng.integers(160, 289)), int(rng.integers(160, 289))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        rel = Path(f"set{i % 4}") / (f"img{i:04d}.png" if i % 2 else f"img{i:04d}.jpg")
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / rel, **({"quality": 90} if rel.suffix == ".jpg" else {}))
        sizes[rel] = (w, h)
    return sizes


def count_outputs(out: Path) -> int:
    return sum(1 for p in out.rglob("img*") if not p.name.startswith("."))


def wait_for_outputs(out: Path, at_least: int, client: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_outputs(out) >= at_least:
            return
        assert client.poll() is None, f"the client ended (status {client.returncode}) before {at_least} outputs"
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} outputs after {timeout} s")


def in_window(requests: list[dict], start: float, end: float) -> list[dict]:
    return [r for r in requests if start <= r["at"] <= end]


def statuses(requests: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in requests:
        counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
    return dict(sorted(counts.items()))


@pytest.fixture(scope="module")
def stack():
    """The compose project, up and ready behind the balancer; down (volumes and all) afterwards."""
    started = time.monotonic()
    compose("up", "--detach", "--no-build", "--wait", "--wait-timeout", "240", timeout=300)
    url = f"http://127.0.0.1:{PORT}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    ready_s = time.monotonic() - started
    try:
        yield url, ready_s
    finally:
        compose("down", "--volumes", "--timeout", "10", timeout=180)


def test_a_batch_survives_a_killed_and_a_drained_replica(stack, tmp_path):
    url, stack_ready_s = stack
    replicas = [f"{PROJECT}-upscaler-1", f"{PROJECT}-upscaler-2"]
    lb = Balancer(f"{PROJECT}-lb-1")
    env = dict(e.split("=", 1) for e in json.loads(inspect(replicas[0], "{{json .Config.Env}}")))
    drain_s = float(env["UPSCALER_DRAIN_SECONDS"])
    grace = inspect(replicas[1], "{{.Config.StopTimeout}}")

    src, out = tmp_path / "in", tmp_path / "out"
    sizes = make_inputs(src, IMAGES)
    load_before = os.getloadavg()[0]  # other work on the machine shows here (the stack itself is idle)
    # The batch client's command line, its log stamped and with each failed attempt (client.service_client's debug
    # line), so that the client's errors can be put in the phase they came in.
    logs = (
        "import logging, sys; from client.batch import main; "
        "logging.basicConfig(level=logging.INFO, format='%(created).3f %(name)s %(levelname)s: %(message)s'); "
        "logging.getLogger('client.service_client').setLevel(logging.DEBUG); sys.exit(main(sys.argv[1:]))"
    )
    argv = [sys.executable, "-c", logs, str(src), "--out", str(out), "--server", url, "--recursive"]
    argv += ["--scale", str(SCALE), "--concurrency", str(CONCURRENCY)]
    log_path = tmp_path / "client.log"
    with log_path.open("w") as log:
        client = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        # (a) SIGKILL one replica's server, as the kernel's OOM killer or a crash would: Docker restarts it.
        wait_for_outputs(out, IMAGES // 20, client)
        killed, drained = replicas
        killed_ip, killed_pid = ip_of(killed), int(inspect(killed, "{{.State.Pid}}"))
        killed_server = lb.server_at(killed_ip)
        restarts_before = int(inspect(killed, "{{.RestartCount}}"))
        t_kill = time.time()
        os.kill(killed_pid, signal.SIGKILL)
        t_down_a = lb.wait_for(killed_server, "DOWN", t_kill, timeout=30)
        t_up_a = lb.wait_for(killed_server, "UP", t_down_a, timeout=180)
        assert int(inspect(killed, "{{.RestartCount}}")) == restarts_before + 1
        outputs_at_a_end = count_outputs(out)
        assert client.poll() is None, "the batch ended before the drain: make it longer (UPSCALER_FAULTS_IMAGES)"

        # (b) docker stop (SIGTERM, then up to stop_grace_period): the replica drains, exits 0; then start it again.
        drained_server = lb.server_at(ip_of(drained))
        t_term = time.time()
        docker("stop", drained, timeout=120)
        t_exited = time.time()
        exit_code = int(inspect(drained, "{{.State.ExitCode}}"))
        docker("start", drained)
        t_down_b = lb.wait_for(drained_server, "DOWN", t_term, timeout=30)
        t_up_b = lb.wait_for(drained_server, "UP", t_exited, timeout=180)
        outputs_at_b_end = count_outputs(out)
        client_status = client.wait(timeout=600)
    finally:
        if client.poll() is None:
            client.kill()
    client_log = log_path.read_text()
    report = json.loads((out / "report.json").read_text())
    requests, changes = lb.read()
    (tmp_path / "lb.log").write_text(lb.log())  # for a look afterwards; the figures below come from it

    # Every input: exactly one output, whole, decodable, of the right size; nothing else left behind.
    expected = {rel: (w * SCALE, h * SCALE) for rel, (w, h) in sizes.items()}
    made = {p.relative_to(out) for p in out.rglob("*") if p.is_file()} - {Path("report.json")}
    lost, extra, corrupt = set(expected) - made, made - set(expected), []
    for rel in sorted(set(expected) & made):
        try:
            with Image.open(out / rel) as im:
                im.load()
                if im.size != expected[rel] or im.format != ("PNG" if rel.suffix == ".png" else "JPEG"):
                    corrupt.append(f"{rel}: {im.format} {im.size}, want {expected[rel]}")
        except Exception as exc:  # any decoding error is a corrupt output
            corrupt.append(f"{rel}: {exc}")

    failed_attempts = [(float(m[1]), m[2]) for m in ATTEMPT_LINE.finditer(client_log)]
    events = sorted(
        [(c["at"], f"{c['server']} {c['state']}") for c in changes]
        + [(r["at"], r["line"]) for r in requests if r["status"] != 200]
    )
    after_kill = [r for r in requests if r["server"] == killed_server and t_kill <= r["at"] <= t_up_a]
    sent_to_dead = [r for r in after_kill if r["at"] <= t_down_a]
    in_flight = [
        r for r in requests if r["server"] == killed_server and r["at"] < t_kill < r["at"] + r["total_ms"] / 1e3
    ]
    after_term = [r for r in requests if r["server"] == drained_server and t_term <= r["at"] <= t_up_b]
    figures = {
        "what": (
            "docker compose (docker-compose.yml + docker-compose.cpu.yml + deploy/faults/compose.yml): 2 CPU replicas "
            "behind the Traefik stand-in of deploy/faults/haproxy.cfg; the batch client (python -m client.batch) "
            "pushes a folder while (a) one replica's server is SIGKILLed (Docker restarts it) and (b) the other is "
            "stopped with docker stop (SIGTERM, drain) and started again"
        ),
        "setup": {
            "replicas": 2,
            "cpus_per_replica": CPUS_PER_REPLICA,
            "drain_seconds": drain_s,
            "stop_grace_period_s": int(grace) if grace.isdigit() else grace,
            "balancer_check": {"path": "/readyz", "interval_s": CHECK_INTERVAL_S, "timeout_s": CHECK_TIMEOUT_S},
            "client": {"concurrency": CONCURRENCY, "retries": 8, "backoff_s": 0.5, "scale": SCALE},
            "stack_up_and_ready_s": round(stack_ready_s, 1),
            "load_average_1min_before_and_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "inputs": {"images": IMAGES, "formats": ["png", "jpeg"], "sides_px": [160, 288]},
        "outputs": {
            "complete_and_right_size": len(expected) - len(lost) - len(corrupt),
            "lost": len(lost),
            "corrupt": len(corrupt),
            "extra": len(extra),
        },
        "client": {
            "exit_status": client_status,
            "done": report["done"],
            "failed": report["failed"],
            "retried_requests": report["retries"],
            "errors_seen": sum(report["errors"].values()),
            "errors_by_cause": report["errors"],
            "seconds": report["seconds"],
            "outputs_when_a_ended": outputs_at_a_end,
            "outputs_when_b_ended": outputs_at_b_end,
            "errors_after_the_sigkill": dict(Counter(c for at, c in failed_attempts if t_kill <= at < t_term)),
            "errors_after_the_sigterm": dict(Counter(c for at, c in failed_attempts if at >= t_term)),
        },
        "sigkill": {
            "requests_in_flight_on_it": len(in_flight),
            "their_statuses_at_the_balancer": statuses(in_flight),
            "balancer_stopped_routing_after_s": round(t_down_a - t_kill, 2),
            "requests_routed_to_it_before_that": len(sent_to_dead),
            "their_statuses": statuses(sent_to_dead),
            "last_request_routed_to_it_after_s": round(
                max((r["at"] for r in sent_to_dead), default=t_kill) - t_kill, 2
            ),
            "back_in_rotation_after_s": round(t_up_a - t_kill, 1),
            "balancer_statuses_meanwhile": statuses(in_window(requests, t_kill, t_up_a)),
        },
        "sigterm": {
            "balancer_stopped_routing_after_s": round(t_down_b - t_term, 2),
            "requests_routed_to_it_while_draining": len([r for r in after_term if r["at"] <= t_down_b]),
            "their_statuses": statuses([r for r in after_term if r["at"] <= t_down_b]),
            "exited_after_s": round(t_exited - t_term, 2),
            "exit_code": exit_code,
            "back_in_rotation_after_start_s": round(t_up_b - t_exited, 1),
            "balancer_statuses_meanwhile": statuses(in_window(requests, t_term, t_up_b)),
        },
        "balancer_statuses_overall": statuses(requests),
        # What the balancer logged, in seconds from the SIGKILL: each change of a replica, each request not
        # answered 200 (its line: accept time, replica, its address, status, total/connect/answer ms, termination).
        "balancer_events_from_the_sigkill_s": [f"{at - t_kill:+.2f} {what}" for at, what in events],
        "sigterm_sent_at_s_from_the_sigkill": round(t_term - t_kill, 2),
    }
    results = Path(os.environ.get("UPSCALER_FAULTS_RESULTS") or tmp_path / "replicas-under-faults.json")
    from bench.machine import describe

    results.write_text(json.dumps({"machine": describe(), **figures}, indent=2) + "\n")
    print(json.dumps(figures, indent=2))

    assert client_status == 0, client_log[-3000:]
    assert len(failed_attempts) == report["retries"] == sum(report["errors"].values())
    assert (report["done"], report["failed"]) == (IMAGES, 0)
    assert not lost and not corrupt and not extra, (sorted(lost)[:5], corrupt[:5], sorted(extra)[:5])
    # Routing stops within one probe interval and its timeout, plus a second for the probe's own path.
    assert t_down_a - t_kill <= CHECK_INTERVAL_S + CHECK_TIMEOUT_S + 1
    # The drain: the balancer saw the 503 before the server stopped listening, and nothing routed meanwhile failed.
    assert t_down_b - t_term < drain_s
    assert exit_code == 0
    assert figures["sigterm"]["balancer_statuses_meanwhile"].keys() <= {"200"}, figures["sigterm"]
