"""Smoke tests of the load tools against the real service (bounded to a few requests; no timing assertions)."""

import csv
import json
import logging
import shutil
import subprocess
import sys

import pytest

from client.loadtest import LoadOptions, ProcessLoad, closed_loop, main, make_payloads, open_loop, parse_mix
from tests.conftest import ROOT, free_port


@pytest.fixture(scope="module")
def payloads():
    return make_payloads([32, 48])


def test_closed_loop_counts_requests_pixels_and_latency(server, payloads):
    step = closed_loop(server.url, payloads, 2, LoadOptions(duration=30, max_requests=6, params={"scale": 2}))
    assert step.requests == step.ok == 6 and step.errors == {}
    assert step.output_mpix_per_s > 0 and 0 < step.p50_ms <= step.p99_ms


def test_closed_loop_in_several_client_processes_merges_their_counts(server, payloads):
    options = LoadOptions(duration=30, max_requests=8, params={"scale": 2})
    with ProcessLoad(2) as clients:
        step = clients.closed_loop(server.url, payloads, 4, options)
    assert step.requests == step.ok == 8 and step.errors == {}  # 4 per process, each process's share
    pixels = sum(p.width * p.height * 4 for p in payloads) * 4  # each payload sent 4 times at x2
    rounding = step.output_mpix_per_s * 1e6 * 0.0005  # seconds are rounded to the millisecond
    assert step.output_mpix_per_s * step.seconds * 1e6 == pytest.approx(pixels, rel=0.001, abs=rounding)
    assert 0 < step.p50_ms <= step.p99_ms


def test_closed_loop_with_fewer_workers_than_client_processes_still_sends_every_request(server, payloads):
    with ProcessLoad(2) as clients:
        step = clients.closed_loop(server.url, payloads, 1, LoadOptions(duration=30, max_requests=3))
    assert step.requests == step.ok == 3


def test_open_loop_sends_at_the_offered_rate(server, payloads):
    step = open_loop(server.url, payloads, 8, LoadOptions(duration=0.5, max_requests=100, params={"scale": 3}))
    assert step.requests == 4 and step.ok == 4


def test_open_loop_refuses_a_rate_of_zero(payloads):
    with pytest.raises(ValueError, match="rate above 0"):
        open_loop("http://127.0.0.1:9", payloads, 0, LoadOptions(duration=1, max_requests=1))


def test_errors_are_counted_by_status(server, payloads):
    step = closed_loop(server.url, payloads, 1, LoadOptions(duration=30, max_requests=2, params={"model": "nope"}))
    assert step.ok == 0 and step.errors == {"400": 2}


def test_connection_failures_are_counted_by_exception_name(payloads):
    step = closed_loop(f"http://127.0.0.1:{free_port()}", payloads, 2, LoadOptions(duration=30, max_requests=3))
    assert step.ok == 0 and step.errors == {"ConnectionRefusedError": 3}


def test_a_server_that_is_not_an_http_url_is_refused(payloads):
    with pytest.raises(ValueError, match="http:// or https:// URL"):
        closed_loop("127.0.0.1:8000", payloads, 1, LoadOptions(duration=1, max_requests=1))


def test_command_writes_json_csv_and_plot(server, tmp_path):
    main(
        [
            "--server",
            server.url,
            "--concurrency",
            "1,2",
            "--duration",
            "5",
            "--max-requests",
            "3",
            "--sizes",
            "32",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "loadtest.json").read_text())
    assert [s["level"] for s in report["steps"]] == [1, 2] and all(s["ok"] == 3 for s in report["steps"])
    with (tmp_path / "loadtest.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    assert (tmp_path / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


MIX = "small:32:png:2:2,large:48x40:jpeg80:3:1"


def test_a_mix_reports_each_class_beside_the_overall_figures(server):
    step = closed_loop(server.url, parse_mix(MIX), 3, LoadOptions(duration=30, max_requests=9))
    assert step.requests == step.ok == 9 and set(step.classes) == {"small", "large"}
    small, large = step.classes["small"], step.classes["large"]
    assert small["ok"] + large["ok"] == 9 and small["ok"] > 0 and large["ok"] > 0
    pixels = small["ok"] * 32 * 32 * 4 + large["ok"] * 48 * 40 * 9  # each class at its own scale
    rounding = step.output_mpix_per_s * 1e6 * 0.0005
    assert step.output_mpix_per_s * step.seconds * 1e6 == pytest.approx(pixels, rel=0.001, abs=rounding)
    assert 0 < large["p50_ms"] <= large["p99_ms"]


def test_a_mix_in_several_client_processes_keeps_its_classes_apart(server):
    with ProcessLoad(2) as clients:
        step = clients.closed_loop(server.url, parse_mix(MIX), 3, LoadOptions(duration=30, max_requests=6))
    assert step.ok == 6 and step.classes["small"]["ok"] + step.classes["large"]["ok"] == 6
    assert step.classes["small"]["ok"] > 0 and step.classes["large"]["ok"] > 0


def test_the_open_loop_sends_each_class_its_weights_share(server):
    step = open_loop(server.url, parse_mix(MIX), 20, LoadOptions(duration=0.6, max_requests=100))
    assert (step.classes["small"]["ok"], step.classes["large"]["ok"]) == (8, 4)


def test_a_closed_loop_mix_needs_a_worker_for_every_class(server):
    with pytest.raises(ValueError, match="concurrency of at least 2"):
        closed_loop(server.url, parse_mix(MIX), 1, LoadOptions(duration=1, max_requests=1))


@pytest.mark.parametrize(
    "spec",
    [
        "web:256:gif:2:1",
        "web:256:png:5:1",
        "web:256:png:2:0",
        "web:256x:png:2:1",
        "web:256:png:2",
        "a:8:png:2:1,a:9:png:2:1",
    ],
)
def test_a_malformed_mix_is_refused(spec):
    with pytest.raises(ValueError):
        parse_mix(spec)


def test_the_command_writes_each_class_of_a_mix(server, tmp_path):
    main(["--server", server.url, "--concurrency", "3", "--max-requests", "3", "--mix", MIX, "--out", str(tmp_path)])
    (step,) = json.loads((tmp_path / "loadtest.json").read_text())["steps"]
    assert set(step["classes"]) == {"small", "large"} and step["ok"] == 3


LOCUST = shutil.which("locust", path=str(ROOT / ".venv" / "bin")) or shutil.which("locust")


@pytest.mark.skipif(LOCUST is None, reason="locust is not installed")
def test_locust_file_runs_headless(server, tmp_path):
    cmd = [LOCUST, "-f", "client/locustfile.py", "--headless", "--host", server.url, "--users", "2"]
    cmd += ["--spawn-rate", "2", "--run-time", "3s", "--csv", str(tmp_path / "locust"), "--only-summary"]
    env = {"PYTHONPATH": str(ROOT), "UPSCALER_LOAD_SIZES": "32", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    with (tmp_path / "locust_stats.csv").open() as f:
        rows = list(csv.DictReader(f))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0, done.stderr[-2000:]


def test_without_matplotlib_the_command_says_it_wrote_no_plot(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    caplog.set_level(logging.INFO)
    main(["--server", server.url, "--concurrency", "1", "--max-requests", "1", "--sizes", "16", "--out", str(tmp_path)])
    assert not (tmp_path / "loadtest.png").exists()
    assert "no plot written" in caplog.text and "loadtest.png" not in caplog.text.split("wrote")[-1]
