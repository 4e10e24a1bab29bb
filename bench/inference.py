"""Engine benchmark: the service's CPU kernels against the libraries that could run the same network, on the same
tiles, each as a fraction of the machine's SGEMM rate for its instruction set.

    python -m bench.inference [--models fast_x2,turbo_x2] [--tile 128] [--batch 8] [--quick]

Writes ``bench/results/engine-<machine class>.json`` (``bench.machine.machine_class``; ``--name`` names another file).
Every figure counts the multiply-adds of the network as trained (not the extra ones of ONNX Runtime's _cpu graph:
its padded channels, one-hot shuffles and a layer computed twice) at the real tile shape.

The service's layout: one single-threaded run per core at once, each of the service's CPU batch size for that
runtime (4 tiles on the native kernels, 2 on ONNX Runtime). Timed there, in one run:

* ``native_<isa>``: ``service.runtime.fsrcnn_kernels`` on every instruction set this CPU runs (``avx512``, ``avx2``);
* ``onnxruntime_cpu_twin``: ONNX Runtime on the _cpu graph (``export.cpu``), what the service runs without the kernels;
* ``onnxruntime_shipped_graph``: ONNX Runtime on the shipped model file, unmodified;
* ``openvino``: OpenVINO on the shipped model file, unmodified, in float32 (``pip install -e .[bench]``; left out
  where it is not installed). OpenVINO would otherwise run in bf16 where the CPU has it, which changes the pixels.

SGEMM is numpy's BLAS, measured just before the runs (this machine's speed drifts): once as the machine runs it,
and once restricted to AVX2 kernels (OpenBLAS's Haswell kernel, ``OPENBLAS_CORETYPE``), the peak an AVX2 machine of
this clock would have. ``native_avx2`` is reported against the latter, everything else against the former. So on an
AVX-512 CPU the ``avx2`` figures stand in for an AVX2 machine: same code, same kind of peak, not the same chip.

Besides, one run on all threads compares ONNX Runtime with PyTorch eager, and each file at both of ONNX Runtime's
graph optimisation levels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.machine import MODELS, avx2_sgemm_gflops, machine_class, sgemm_gflops, timed, write_result
from model.network import SRNet
from service.runtime.engine import Engine
from service.runtime.fsrcnn_kernels import instruction_sets
from service.settings import default_max_batch


def conv_flops(net: SRNet, x: torch.Tensor) -> int:
    """2 x multiply-adds of all (transposed) convolutions for input ``x``."""
    total = 0

    def count(mod, inputs, output):
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1]
        if isinstance(mod, torch.nn.ConvTranspose2d):  # every input pixel scatters a kernel per output channel
            total += inputs[0].numel() * mod.out_channels // mod.groups * k
        else:
            total += output.numel() * mod.in_channels // mod.groups * k

    hooks = [
        m.register_forward_hook(count)
        for m in net.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    with torch.inference_mode():
        net(x)
    for h in hooks:
        h.remove()
    return 2 * total


def measure(model: str, tile: int, batch: int, threads: int, repeat: int, sgemm_n: int) -> dict:
    path = MODELS / f"{model}.onnx"
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    net = SRNet(**json.loads(meta["config"])).eval()  # same architecture; speed does not depend on weight values
    c = int(meta["context"])
    x = np.random.default_rng(0).random((batch, 3, tile + 2 * c, tile + 2 * c), dtype=np.float32)
    flops_per_tile = conv_flops(net, torch.from_numpy(x)) / batch
    return {
        "gflop_per_tile": flops_per_tile / 1e9,
        "service_layout": service_layout(path, tile, x, flops_per_tile, repeat, sgemm_n),
        "all_threads": all_threads(path, tile, net, x, flops_per_tile * batch, threads, repeat),
    }


def service_layout(path: Path, tile: int, x: np.ndarray, flops_per_tile: float, repeat: int, sgemm_n: int) -> dict:
    """Every peer in the service's layout, as GFLOP/s and as a fraction of its instruction set's SGEMM."""
    sgemm = {
        "machine": sgemm_gflops(sgemm_n, repeat=repeat),
        # OpenBLAS's AVX2 kernel exists on x86-64 only; it is the peak of the AVX2 kernels, where they run.
        "avx2": avx2_sgemm_gflops(sgemm_n, repeat) if "avx2" in instruction_sets() else None,
    }
    workers = Engine(path, tile=tile, prefer_gpu=False, cpu_kernels="onnxruntime")
    runs: dict[str, tuple[list[Callable[[], object]], int]] = {}
    for isa in instruction_sets():
        engine = Engine(path, tile=tile, prefer_gpu=False, cpu_kernels=isa)
        runs[f"native_{isa}"] = _engine_runs(engine, x[: default_max_batch(False, native=True)])
    runs["onnxruntime_cpu_twin"] = _engine_runs(workers, x[: default_max_batch(False)])
    runs["onnxruntime_shipped_graph"] = _shipped_graph_runs(path, x[: default_max_batch(False)], workers.workers)
    openvino = _openvino_runs(path, x[: default_max_batch(False, native=True)], workers.workers)
    if openvino is not None:
        runs["openvino"] = openvino
    gflops = {}
    for name, (calls, tiles) in runs.items():
        seconds = _concurrent(calls, repeat)
        gflops[name] = len(calls) * tiles * flops_per_tile / seconds / 1e9
    peak = {name: sgemm["avx2" if name == "native_avx2" else "machine"] for name in gflops}
    return {
        "runs": f"{workers.workers} at once x 1 thread",
        "sgemm_gflops": sgemm,
        "gflops": gflops,
        "fraction_of_sgemm": {name: g / peak[name] for name, g in gflops.items()},
        "fastest": max(gflops, key=gflops.get),
        "service_default": _service_default(path),
        "openvino_max_abs_diff": _openvino_max_abs_diff(path, x[:1]),
    }


def _service_default(path: Path) -> str:
    """What the service runs this model on by default on this machine."""
    engine = Engine(path, prefer_gpu=False, tile=16)
    key = next(iter(engine.specs))
    isa = engine.instruction_set(key)
    return f"native_{isa}" if isa else "onnxruntime_cpu_twin"


def _engine_runs(engine: Engine, x: np.ndarray) -> tuple[list[Callable[[], object]], int]:
    key = next(iter(engine.specs))
    return [lambda: engine.run(key, x)] * engine.workers, len(x)


def _shipped_graph_runs(path: Path, x: np.ndarray, workers: int) -> tuple[list[Callable[[], object]], int]:
    """The model file as shipped, one thread per run, at the level the engine gives a model without a derived file."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [lambda: session.run(["sr"], {"lr": x})] * workers, len(x)


def _openvino_compiled(path: Path, shape: tuple[int, ...]):
    try:
        import openvino
    except ImportError:
        return None
    core = openvino.Core()
    network = core.read_model(str(path))
    network.reshape(list(shape))
    config = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    return core.compile_model(network, "CPU", {**config, "INFERENCE_PRECISION_HINT": "f32"})


def _openvino_runs(path: Path, x: np.ndarray, workers: int) -> tuple[list[Callable[[], object]], int] | None:
    compiled = _openvino_compiled(path, x.shape)
    if compiled is None:
        print("openvino is not installed (pip install -e .[bench]); left out", file=sys.stderr)
        return None
    requests = [compiled.create_infer_request() for _ in range(workers)]
    # One call on this thread first: OpenVINO's binding sets up its numpy interface on first use, and two threads
    # doing that at once can deadlock (pybind11's gil_safe_call_once; seen as a hung benchmark).
    requests[0].infer({0: x})
    return [lambda r=r: r.infer({0: x}) for r in requests], len(x)


def _openvino_max_abs_diff(path: Path, x: np.ndarray) -> float | None:
    """OpenVINO's output against ONNX Runtime's on the shipped graph: float32 agrees to rounding."""
    compiled = _openvino_compiled(path, x.shape)
    if compiled is None:
        return None
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["sr"], {"lr": x})[0]
    return float(np.abs(compiled.create_infer_request().infer({0: x})[0] - reference).max())


def _concurrent(calls: list[Callable[[], object]], repeat: int) -> float:
    """Seconds for every call at once, each on its own thread, as the service's engine threads run them."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return timed(lambda: list(pool.map(lambda call: call(), calls)), repeat=repeat)


def all_threads(path: Path, tile: int, net: SRNet, x: np.ndarray, flops: float, threads: int, repeat: int) -> dict:
    """ONNX Runtime (the _cpu graph, through the engine) against PyTorch eager, one batch on every thread; and each
    file at both of ONNX Runtime's graph optimisation levels."""
    engine = Engine(path, tile=tile, threads=threads, prefer_gpu=False)
    key = next(iter(engine.specs))
    t_ort = timed(lambda: engine.run(key, x), repeat=repeat)
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        t_torch = timed(lambda: net(xt), repeat=repeat)
    by_file = {"model": path, "cpu_twin": engine.specs[key].cpu_path}
    ms = {name: _by_optimization_level(f, x, threads, repeat) for name, f in by_file.items() if f is not None}
    return {
        "graph_optimization_ms": ms,
        # Each file at the level the engine runs it at: the shipped graph "extended", its _cpu graph "all".
        "cpu_twin_speedup": ms["model"]["extended"] / ms["cpu_twin"]["all"] if "cpu_twin" in ms else None,
        "onnxruntime_ms": t_ort * 1000,
        "pytorch_eager_ms": t_torch * 1000,
        "onnxruntime_speedup_vs_pytorch": t_torch / t_ort,
        "onnxruntime_gflops": flops / t_ort / 1e9,
        "pytorch_gflops": flops / t_torch / 1e9,
    }


def _by_optimization_level(path, x: np.ndarray, threads: int, repeat: int) -> dict[str, float]:
    """Milliseconds per batch of one file with ORT's extended graph optimisations and with all (adds NCHWc)."""
    result = {}
    for name, level in (
        ("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the engine does
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        result[name] = timed(lambda s=sess: s.run(["sr"], {"lr": x}), repeat=repeat) * 1000
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="fast_x2,turbo_x2", help="comma-separated shipped model names")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--quick", action="store_true", help="smoke run: tiny tile, one repeat, no result file")
    p.add_argument("--name", help="result file name (default engine-<machine class>)")
    args = p.parse_args(argv)
    repeat = 1 if args.quick else 15
    tile = 16 if args.quick else args.tile
    sgemm_n = 512 if args.quick else 2048
    print(f"machine class: {machine_class()}; native kernels on: {instruction_sets() or 'none'}", file=sys.stderr)
    models = {name: measure(name, tile, args.batch, args.threads, repeat, sgemm_n) for name in args.models.split(",")}
    result = {"tile": tile, "batch": args.batch, "threads": args.threads, "models": models}
    print(json.dumps(result, indent=2))
    if not args.quick:
        print("wrote", write_result(args.name or f"engine-{machine_class()}", result))


if __name__ == "__main__":
    main()
