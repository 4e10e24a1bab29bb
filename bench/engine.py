"""Engine benchmark: ONNX Runtime vs PyTorch eager on the same network and tiles, and vs the SGEMM peak.

    python -m bench.engine [--models fast_x2,turbo_x2] [--tile 128] [--batch 8] [--quick]

Writes bench/results/engine.json. For each model, both runtimes run the shipped
network's architecture on the same batch of serving tiles with the same number
of threads; achieved GFLOP/s counts the multiply-adds of every convolution of
the network as trained (not the extra ones of the CPU twin: its padded channels,
one-hot shuffles and a layer computed twice) at the real tile shape. ONNX
Runtime runs what the service runs on a CPU: the CPU twin (``export.cpu``) at
graph optimisation level "all"; the shipped model's own graph is timed beside it.
Besides one run on all threads (the comparison with PyTorch), the engine is
timed in the service's layout: one single-threaded run per core at once, each
of the service's CPU batch size, both as the service runs it by default (the
native kernels of ``service.native`` where they can run) and on ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import torch

from bench.machine import MODELS, sgemm_gflops, timed, write_result
from model.network import SRNet
from service.engine import Engine
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
    """ONNX Runtime (through the service's Engine) and PyTorch eager on one batch of serving tiles, and the SGEMM
    peak measured just before ONNX Runtime (this machine's speed drifts between runs)."""
    path = MODELS / f"{model}.onnx"
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    net = SRNet(**json.loads(meta["config"])).eval()  # same architecture; speed does not depend on weight values
    c = int(meta["context"])
    x = np.random.default_rng(0).random((batch, 3, tile + 2 * c, tile + 2 * c), dtype=np.float32)
    flops = conv_flops(net, torch.from_numpy(x))
    engine = Engine(path, tile=tile, threads=threads, prefer_gpu=False)
    key = next(iter(engine.specs))
    peak = sgemm_gflops(sgemm_n, repeat=repeat)
    t_ort = timed(lambda: engine.run(key, x), repeat=repeat)
    layout, t_layout, small = {}, {}, {}
    for kernels in ("auto", "onnxruntime"):  # the service's layout: one single-threaded run per core
        layout[kernels] = Engine(path, tile=tile, prefer_gpu=False, cpu_kernels=kernels)
        small[kernels] = x[: default_max_batch(False, layout[kernels].native_only)]  # the service's batch size
        t_layout[kernels] = _concurrent_runs(layout[kernels], key, small[kernels], repeat)
    layout_gflops = {k: layout[k].workers * flops * len(small[k]) / batch / t / 1e9 for k, t in t_layout.items()}
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        t_torch = timed(lambda: net(xt), repeat=repeat)
    by_file = {"model": path, "cpu_twin": engine.specs[key].cpu_path}
    ms = {name: _by_optimization_level(f, x, threads, repeat) for name, f in by_file.items() if f is not None}
    return {
        "graph_optimization_ms": ms,
        # Each file at the level the engine runs it at: the shipped graph "extended", its CPU twin "all".
        "cpu_twin_speedup": ms["model"]["extended"] / ms["cpu_twin"]["all"] if "cpu_twin" in ms else None,
        "gflop_per_batch": flops / 1e9,
        "onnxruntime_ms": t_ort * 1000,
        "pytorch_eager_ms": t_torch * 1000,
        "onnxruntime_speedup_vs_pytorch": t_torch / t_ort,
        "onnxruntime_gflops": flops / t_ort / 1e9,
        "sgemm_gflops": peak,
        "onnxruntime_fraction_of_sgemm": flops / t_ort / 1e9 / peak,
        "service_layout": f"{layout['auto'].workers} concurrent runs x 1 thread, {len(small['auto'])} tiles each",
        # What the service runs by default: the native kernels where they can run (service.native), else ORT.
        "service_layout_kernels": layout["auto"].kernels(key),
        "service_layout_gflops": layout_gflops["auto"],
        "service_layout_fraction_of_sgemm": layout_gflops["auto"] / peak,
        "service_layout_onnxruntime_gflops": layout_gflops["onnxruntime"],
        "service_layout_onnxruntime_fraction_of_sgemm": layout_gflops["onnxruntime"] / peak,
        # Each at the service's batch size for it (4 tiles native, 2 on ORT), so as GFLOP/s, not times.
        "native_speedup_vs_onnxruntime": layout_gflops["auto"] / layout_gflops["onnxruntime"],
        "pytorch_gflops": flops / t_torch / 1e9,
        "engine_output_mpix_per_s": batch * (tile * net.scale) ** 2 / 1e6 / t_ort,
    }


def _concurrent_runs(engine: Engine, key, x: np.ndarray, repeat: int) -> float:
    """Seconds for ``engine.workers`` runs of ``x`` at once, as the service's engine threads run them."""
    with ThreadPoolExecutor(engine.workers) as pool:
        return timed(lambda: list(pool.map(lambda _: engine.run(key, x), range(engine.workers))), repeat=repeat)


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
    args = p.parse_args(argv)
    repeat = 1 if args.quick else 15
    tile = 16 if args.quick else args.tile

    sgemm_n = 512 if args.quick else 2048
    models = {name: measure(name, tile, args.batch, args.threads, repeat, sgemm_n) for name in args.models.split(",")}
    result = {"tile": tile, "batch": args.batch, "threads": args.threads, "models": models}
    print(json.dumps(result, indent=2))
    if not args.quick:
        print("wrote", write_result("engine", result))


if __name__ == "__main__":
    main()
