"""Several server processes on one port (UPSCALER_PROCESSES): the real service, started as users start it."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.settings import default_processes
from tests.conftest import ROOT, child_env, encode_image, free_port, smooth_image, start_server, stop_server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def children(pid: int) -> set[int]:
    """The server processes of supervisor ``pid`` (not multiprocessing's resource tracker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def process_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {k: float(v) for k, v in re.findall(r"^(upscaler_processes(?:_ready)?) (\S+)$", text, re.M)}


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def all_ready(url: str, n: int) -> bool:
    return process_counts(url) == {"upscaler_processes": n, "upscaler_processes_ready": n}


@pytest.fixture
def two_processes(tmp_path):
    srv = start_server(tmp_path, processes=2, tile=32)
    try:
        wait_until(lambda: all_ready(srv.url, 2))
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def small_png() -> bytes:
    return encode_image(Image.fromarray(smooth_image(40, 40)))


def post_many(url: str, body: bytes, n: int) -> list[int]:
    """``n`` requests, each on its own connection, 8 at a time."""

    def one(_) -> int:
        with httpx.Client(base_url=url, timeout=60) as c:
            return c.post("/v1/upscale", content=body).status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def test_the_default_is_one_process_on_a_cpu_and_one_per_two_cores_with_a_gpu():
    assert default_processes(on_gpu=False, cores=16) == 1
    assert default_processes(on_gpu=True, cores=16) == 8
    assert default_processes(on_gpu=True, cores=1) == 1


def test_connections_are_spread_over_every_process(two_processes, small_png):
    assert post_many(two_processes.url, small_png, 24) == [200] * 24
    access = [json.loads(line) for line in two_processes.log().splitlines() if '"logger": "service.access"' in line]
    pids = {str(entry["pid"]) for entry in access}
    assert pids == {str(p) for p in children(two_processes.process.pid)}
    assert len(pids) == 2  # 24 connections all hashed to one process: about 1 in 8 million


def test_metrics_add_up_the_requests_of_every_process(two_processes, small_png):
    post_many(two_processes.url, small_png, 10)
    text = httpx.get(f"{two_processes.url}/metrics").text
    assert 'upscaler_requests_total{path="/v1/upscale",status="200"} 10.0' in text
    assert process_counts(two_processes.url) == {"upscaler_processes": 2, "upscaler_processes_ready": 2}


def test_a_process_that_dies_is_replaced_and_the_service_keeps_answering(two_processes, small_png):
    before = children(two_processes.process.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(children(two_processes.process.pid) - before) == 1)
    wait_until(lambda: all_ready(two_processes.url, 2))
    assert victim not in children(two_processes.process.pid)
    assert post_many(two_processes.url, small_png, 4) == [200] * 4
    assert f"server process {victim} died (exit status -9); starting another" in two_processes.log()


def test_sigterm_stops_every_process_and_exits_0(tmp_path):
    srv = start_server(tmp_path, processes=2, tile=32)
    try:
        wait_until(lambda: all_ready(srv.url, 2))
        pids = children(srv.process.pid)
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.wait(timeout=60) == 0
    finally:
        stop_server(srv)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert "all server processes stopped (exit statuses [0, 0])" in srv.log()


def test_a_process_that_cannot_start_stops_the_service_with_status_3(tmp_path):
    env = child_env(UPSCALER_PORT=str(free_port()), UPSCALER_PROCESSES="2")
    env["UPSCALER_MODEL_DIR"] = str(tmp_path)  # no models there
    proc = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3
    assert "no <variant>_x<scale>.onnx models found" in proc.stderr
    assert "a server process failed to start (exit status 3); stopping the others" in proc.stderr


def test_a_port_in_use_is_reported_and_nothing_starts(tmp_path, two_processes):
    port = httpx.URL(two_processes.url).port
    env = child_env(UPSCALER_PORT=str(port), UPSCALER_PROCESSES="2")
    proc = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3 and f"cannot bind 127.0.0.1 port {port}" in proc.stderr


def supervise(target: str, seconds: float, **env: str) -> subprocess.CompletedProcess:
    """tests/http/supervisor_targets.py: a supervisor of two ``target`` children, SIGTERMed after ``seconds``."""
    env = child_env(**env)
    cmd = [sys.executable, "-m", "tests.http.supervisor_targets", target, str(seconds)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_process_that_exits_before_it_is_ready_is_not_restarted(tmp_path):
    proc = supervise("exit_before_ready", seconds=30)
    assert proc.returncode == 3
    assert proc.stderr.count("failed to start (exit status 1)") == 1 and "starting another" not in proc.stderr


def test_a_process_that_keeps_dying_is_restarted_ever_more_slowly():
    proc = supervise("ready_then_exit", seconds=8)
    delays = [int(d) for d in re.findall(r"starting another in (\d+) s", proc.stderr)]
    # Children dying 0.3 s after they start: the first death is replaced at once, then after 1, 2, 4, 8 s.
    assert len(delays) >= 4 and delays == [0, 1, 2, 4, 8, 16][: len(delays)], proc.stderr
    assert proc.returncode == 0  # the SIGTERM stopped what was running, as asked


def test_ctrl_c_while_the_processes_start_stops_them_quietly():
    env = child_env()
    cmd = [sys.executable, "-m", "tests.http.supervisor_targets", "ready_and_wait", "60"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = []
    for line in proc.stderr:  # the supervisor has its signal handlers once it says where it serves
        log.append(line)
        if "serving on" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    log.append(proc.communicate(timeout=60)[1])
    assert proc.returncode == 0, "".join(log)
    assert "KeyboardInterrupt" not in "".join(log)


def test_metrics_folders_left_by_a_killed_supervisor_are_removed_and_live_ones_kept(tmp_path):
    stale, live = tmp_path / "upscaler-metrics-stale", tmp_path / "upscaler-metrics-live"
    for folder in (stale, live):
        folder.mkdir()
        (folder / ".lock").touch()
    with open(live / ".lock") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # as a running supervisor or its child holds it
        proc = supervise("exit_before_ready", seconds=30, TMPDIR=str(tmp_path))
    assert proc.returncode == 3
    ours = sorted(p.name for p in tmp_path.iterdir() if "upscaler-metrics" in p.name)
    assert ours == ["upscaler-metrics-live"]  # the stale one and the supervisor's own are gone
