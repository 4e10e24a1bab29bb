"""Smoke tests of the benchmarks: each runs end to end in --quick mode (tiny inputs, no result files)."""

import json

import onnxruntime as ort
import pytest
import torch

from bench import codecs, engine, int8, memory, service, threads


@pytest.mark.parametrize("bench", [engine, codecs, service, memory, int8, threads], ids=lambda m: m.__name__)
def test_benchmark_runs_quick(bench, capsys):
    # The service benchmark also runs two server and two client processes, the GPU layout.
    extra = ["--concurrency", "1,2", "--processes", "2", "--client-processes", "2"] if bench is service else []
    bench.main(["--quick", *extra])
    out = capsys.readouterr().out
    assert out.strip() and "wrote" not in out


def test_engine_benchmark_counts_flops_and_both_runtimes(capsys):
    engine.main(["--quick", "--models", "fast_x2"])
    result = json.loads(capsys.readouterr().out)["models"]["fast_x2"]
    assert result["gflop_per_batch"] > 0 and result["onnxruntime_ms"] > 0 and result["pytorch_eager_ms"] > 0
    assert set(result["graph_optimization_ms"]) == {"model", "cpu_twin"} and result["cpu_twin_speedup"] > 0


def test_thread_benchmark_finds_the_service_threads_by_name(capsys):
    threads.main(["--quick"])
    rows = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"main", "engine", "codec"} <= rows  # the service names its pools' OS threads


def test_service_benchmark_divides_each_service_figure_by_the_engine_figures_around_it():
    engine_figures, service_figures = iter([10.0, 12.0, 8.0]), iter([9.9, 9.0])
    rounds = service.paired_rounds(lambda: next(engine_figures), lambda: next(service_figures), 2)
    assert [r["service_vs_engine"] for r in rounds] == pytest.approx([9.9 / 11, 9.0 / 10])
    assert [(r["engine_before"], r["engine_after"]) for r in rounds] == [(10.0, 12.0), (12.0, 8.0)]


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available(),
    reason="needs ONNX Runtime's CUDA provider and torch with a GPU",
)
def test_gpu_benchmark_runs_quick(capsys):
    from bench import gpu

    gpu.main(["--quick", "--models", "fast_x2"])
    out = capsys.readouterr().out
    assert '"device_output_mpix_per_s"' in out and "wrote" not in out
