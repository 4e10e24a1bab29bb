"""Smoke tests of the benchmarks: each runs end to end in --quick mode (tiny inputs, no result files)."""

import json
import sys

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from bench import (
    clean_models,
    image_coding,
    inference,
    int8,
    layers,
    memory,
    mixed_traffic,
    resampling,
    serving,
    threads,
)
from model.image_quality import mod_crop
from model.imresize import imresize
from service.imageio.webp_quality import read_quality
from service.runtime.fsrcnn_kernels import instruction_sets
from tests.conftest import MODELS, decode_image, encode_image, smooth_image


@pytest.mark.parametrize(
    "bench", [inference, layers, image_coding, serving, memory, int8, threads, resampling], ids=lambda m: m.__name__
)
def test_benchmark_runs_quick(bench, capsys):
    # The service benchmark also runs two server and two client processes, the GPU layout.
    extra = ["--concurrency", "1,2", "--processes", "2", "--client-processes", "2"] if bench is serving else []
    bench.main(["--quick", *extra])
    out = capsys.readouterr().out
    assert out.strip() and "wrote" not in out


@pytest.mark.skipif(not instruction_sets(), reason="the native kernels do not run on this CPU")
def test_layer_benchmark_times_every_convolution_of_a_tile_on_every_instruction_set():
    result = layers.main(["--quick", "--models", "fast_x3"])
    assert set(result["one_thread_sgemm_gflops"]) == set(instruction_sets())
    for run in result["models"]["fast_x3"].values():
        names = [layer["layer"] for layer in run["layers"]]
        assert names == [*(f"body {i}" for i in range(7)), "phases", "skip 0", "skip 1", "skip 2"]
        assert sum(layer["share"] for layer in run["layers"]) == pytest.approx(1, abs=0.01)
        assert run["layers"][0]["shape"] == "3->56, 5x5" and run["layers"][7]["shape"] == "56->27, 3x3"
        assert all(layer["gflops"] > 0 and layer["bytes_written"] > 0 for layer in run["layers"])


def test_engine_benchmark_times_every_peer_against_its_instruction_sets_sgemm(capsys):
    inference.main(["--quick", "--models", "fast_x2"])
    result = json.loads(capsys.readouterr().out)["models"]["fast_x2"]
    layout = result["service_layout"]
    peers = {f"native_{isa}" for isa in instruction_sets()} | {"onnxruntime_cpu_twin", "onnxruntime_shipped_graph"}
    assert peers <= set(layout["gflops"]) and layout["fastest"] in layout["gflops"]
    assert layout["service_default"] == (
        f"native_{instruction_sets()[0]}" if instruction_sets() else "onnxruntime_cpu_twin"
    )
    assert all(layout["fraction_of_sgemm"][p] > 0 for p in layout["gflops"])
    assert layout["sgemm_gflops"]["machine"] > 0
    assert (
        layout["sgemm_gflops"]["avx2"] > 0 if "avx2" in instruction_sets() else layout["sgemm_gflops"]["avx2"] is None
    )
    threads = result["all_threads"]
    assert result["gflop_per_tile"] > 0 and threads["onnxruntime_ms"] > 0 and threads["pytorch_eager_ms"] > 0
    assert set(threads["graph_optimization_ms"]) == {"model", "cpu_twin"} and threads["cpu_twin_speedup"] > 0


def test_the_litserve_peer_serves_the_shipped_model(tmp_path):
    pytest.importorskip("litserve", reason="the LitServe peer needs pip install -e .[bench]")
    port = serving.free_port()
    url = f"http://127.0.0.1:{port}"
    image = smooth_image(40, 30)
    with serving.running([sys.executable, "-m", "bench.litserve_server", "--port", str(port)], {}, url):
        files = {"file": ("image.png", encode_image(Image.fromarray(image)), "image/png")}
        r = httpx.post(f"{url}/v1/upscale", files=files, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    session = ort.InferenceSession(str(MODELS / "fast_x2.onnx"), providers=["CPUExecutionProvider"])
    c = int(session.get_modelmeta().custom_metadata_map["context"])
    x = np.pad(image.astype(np.float32) / 255, ((c, c), (c, c), (0, 0)), mode="symmetric").transpose(2, 0, 1)[None]
    expected = np.clip(session.run(None, {"lr": x})[0][0].transpose(1, 2, 0), 0, 1) * 255 + 0.5
    got = np.asarray(decode_image(r.content), np.float32)
    assert got.shape == (80, 60, 3) and np.abs(got - expected.astype(np.uint8)).max() <= 1


def test_thread_benchmark_finds_the_service_threads_by_name(capsys):
    threads.main(["--quick"])
    rows = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"main", "engine", "codec"} <= rows  # the service names its pools' OS threads


def test_service_benchmark_divides_each_service_figure_by_the_engine_figures_around_it():
    engine_figures, service_figures = iter([10.0, 12.0, 8.0]), iter([9.9, 9.0])
    rounds = serving.paired_rounds(lambda: next(engine_figures), lambda: next(service_figures), 2)
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


def test_lossy_input_benchmark_sends_each_row_to_the_model_of_its_band(tmp_path, capsys):
    from bench import lossy_inputs

    for i in range(2):
        Image.fromarray(smooth_image(64 + 8 * i, 72)).save(tmp_path / f"{i}.png")
    lossy_inputs.main(["--quick", "--data", str(tmp_path), "--scales", "2"])
    rows = json.loads(capsys.readouterr().out)["scales"]["2"]
    cards = [json.loads(p.read_text()) for p in MODELS.glob("*_x2.json")]
    bands = {
        codec: {
            f"{card['variant']}_x2": card[field]
            for card in cards
            if card.get(field) and card["variant"].startswith("fast-")
        }
        for codec, field in (("JPEG", "jpeg_quality"), ("WebP", "webp_quality"))
    }
    assert bands["JPEG"], "no JPEG models shipped"
    assert rows[0]["lr"] == "clean (PNG)" and rows[0]["auto_ran"] == ["fast_x2"]
    assert {row["lr"].split()[0] for row in rows[1:]} == {"JPEG", "WebP"}
    lrs = [imresize(mod_crop(smooth_image(64 + 8 * i, 72), 2), 1 / 2) for i in range(2)]
    for row in rows[1:]:
        codec, quality = row["lr"].split(" q")
        expected = set()
        for lr in lrs:  # the quality the service reads from each file decides
            data = lossy_inputs.encoded(lr, codec.upper(), int(quality))
            read = int(quality) if codec == "JPEG" else read_quality(data).quality
            expected |= {next((m for m, (lo, hi) in bands[codec].items() if lo <= read <= hi), "fast_x2")}
        assert row["auto_ran"] == sorted(expected), row


def test_lossy_input_benchmark_measures_another_tier_against_its_own_clean_model(tmp_path, capsys):
    from bench import lossy_inputs

    Image.fromarray(smooth_image(64, 72)).save(tmp_path / "0.png")
    lossy_inputs.main(["--quick", "--data", str(tmp_path), "--scales", "2", "--tier", "quality"])
    result = json.loads(capsys.readouterr().out)
    rows = {row["lr"]: row for row in result["scales"]["2"]}
    assert result["tier"] == "quality" and rows["clean (PNG)"]["auto_ran"] == ["quality_x2"]
    assert rows["clean (PNG)"]["clean"] == rows["clean (PNG)"]["auto"]  # auto ran the tier's clean model
    assert rows["JPEG q50"]["auto_ran"][0].startswith("quality-jpeg-")


def test_mixed_traffic_benchmark_sends_every_case_to_every_scheduler(capsys):
    result = mixed_traffic.main(["--quick"])
    assert [run["scheduling"] for run in result["runs"]] == list(mixed_traffic.SCHEDULERS)
    for run in result["runs"]:
        for case in run["small_behind_big"].values():
            assert case["small"]["status"] == case["big"]["status"] == 200
        assert run["same_work"]["requests"] == run["same_work"]["ok"] == 6  # 4 small + 2 big, as --quick asks
        assert set(run["mix"]["classes"]) == set(run["alone"]) == {"web", "batch"}
    assert "wrote" not in capsys.readouterr().out


def test_the_sixteen_bit_memory_benchmark_compares_growth_with_the_raw_pixels(capsys):
    memory.main(["--quick", "--sixteen-bit"])
    out = capsys.readouterr().out
    assert "16-bit RGBA PNG, x2" in out and "x raw in+out" in out and "wrote" not in out


def test_the_clean_model_comparison_gives_each_models_gain_against_the_first():
    images = [smooth_image(40, 36, seed=s) for s in range(2)]
    models = [MODELS / "fast_x2.onnx", MODELS / "quality_x2.onnx", MODELS / "fast_x2.onnx"]
    rows = clean_models.compare(models, ["fast", "quality", "fast again"], images, ["a", "b"], 2)
    assert [r["model"] for r in rows] == ["fast", "quality", "fast again"]
    assert rows[0]["gain_over_baseline"] == 0 and rows[2]["gain_over_baseline"] == 0
    assert rows[1]["gain_over_baseline"] == pytest.approx(rows[1]["gain"] - rows[0]["gain"], abs=2e-3)
    assert rows[1]["psnr"] != rows[0]["psnr"]  # a different model gives different pixels
