"""GPU engine benchmark: ONNX Runtime's CUDA provider vs PyTorch eager on the same GPU, and vs the GPU's peak.

    python -m bench.gpu [--models fast_x2,turbo_x2] [--shapes 128x8,128x64,256x32,512x8] [--quick]

Needs onnxruntime-gpu and a CUDA GPU (and torch with CUDA for the eager
baseline); writes bench/results/gpu.json. For every model, precision (fp32,
and the shipped _fp16 file) and tile shape (LR tile core x batch) it measures:

- ``host``: the service's ``Engine.run`` exactly as it serves, fp32 tiles in
  host memory, the output copied back to the host (what a request costs);
- ``device``: the same session with input and output bound to GPU memory
  through IOBinding (the network alone, no PCIe copies);
- ``cuda_graph``: the device path replayed as a CUDA graph (ORT's
  ``enable_cuda_graph``), at the largest shape only;
- ``pytorch``: the same architecture in PyTorch eager on the GPU
  (cudnn.benchmark on, like the engine's exhaustive cuDNN search).

Output MPix/s counts output pixels (scale x tile)^2 x batch. The peak is
torch's matrix product on the same GPU, fp32 (no TF32) and fp16. The fp32
rows run convolutions with TF32 allowed (the default of ORT's CUDA provider
and of cuDNN in torch), so against a TF32 peak their share would be smaller.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch

from bench.inference import conv_flops
from bench.machine import MODELS, write_result
from model.network import SRNet
from service.runtime.engine import Engine


def gpu_timed(fn: Callable[[], object], seconds: float = 0.5, warmup: int = 3) -> float:
    """Median seconds per call, each call synchronised with the GPU, repeated for about ``seconds``."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_tflops(dtype: torch.dtype, n: int = 8192) -> float:
    """The GPU's practical peak for ``dtype``: a large matrix product through torch (TF32 off for fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    return 2 * n**3 / gpu_timed(lambda: a @ b, seconds=1.0) / 1e12


def _device_runner(session: ort.InferenceSession, x: np.ndarray, out_shape: tuple[int, ...]) -> Callable[[], None]:
    """A call that runs ``session`` on GPU-resident input and output (IOBinding, no host copies)."""
    x_gpu = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    y_gpu = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input("lr", x_gpu)
    binding.bind_ortvalue_output("sr", y_gpu)
    return lambda: session.run_with_iobinding(binding)


def _cuda_graph_ms(path: str, x: np.ndarray, out_shape: tuple[int, ...]) -> float:
    opts = ort.SessionOptions()
    provider = ("CUDAExecutionProvider", {"enable_cuda_graph": "1", "cudnn_conv_algo_search": "EXHAUSTIVE"})
    session = ort.InferenceSession(path, opts, providers=[provider])
    return gpu_timed(_device_runner(session, x, out_shape)) * 1000


def _pytorch_ms(net: SRNet, x: np.ndarray, half: bool) -> float:
    torch.backends.cudnn.benchmark = True
    net = copy.deepcopy(net).cuda().eval()
    xt = torch.from_numpy(x).cuda()
    if half:
        net, xt = net.half(), xt.half()
    with torch.inference_mode():
        return gpu_timed(lambda: net(xt)) * 1000


def measure_model(name: str, shapes: list[tuple[int, int]], seconds: float) -> dict:
    path = MODELS / f"{name}.onnx"
    card = json.loads(path.with_suffix(".json").read_text())
    net = SRNet(**card["config"])  # same architecture; speed does not depend on weight values
    scale, context = card["scale"], card["context"]
    biggest = max(shapes, key=lambda s: s[0] ** 2 * s[1])
    tile_gflop = {t: conv_flops(net, torch.zeros(1, 3, t + 2 * context, t + 2 * context)) / 1e9 for t, _ in shapes}
    rows = []
    for precision in ("fp32", "fp16"):
        engine = Engine(path, prefer_gpu=True, precision=precision)  # sessions take any tile shape
        if not engine.on_gpu or engine.fp16 != (precision == "fp16"):
            raise SystemExit(f"{name} {precision}: ORT runs it on {engine.provider} (_fp16 file: {engine.fp16})")
        key = next(iter(engine.specs))
        for tile, batch in shapes:
            n = tile + 2 * context
            x = np.random.default_rng(0).random((batch, 3, n, n), dtype=np.float32)
            out_shape = (batch, 3, scale * tile, scale * tile)
            mpix = batch * (scale * tile) ** 2 / 1e6
            gflop = tile_gflop[tile] * batch
            row = {"precision": precision, "tile": tile, "batch": batch, "gflop_per_batch": gflop}
            row["host_ms"] = gpu_timed(lambda e=engine, k=key, x=x: e.run(k, x), seconds) * 1000
            row["device_ms"] = gpu_timed(_device_runner(engine.backends[key].session, x, out_shape), seconds) * 1000
            if (tile, batch) == biggest:
                model_file = engine.specs[key].fp16_path if precision == "fp16" else path
                try:
                    row["cuda_graph_ms"] = _cuda_graph_ms(str(model_file), x, out_shape)
                except Exception as exc:  # noqa: BLE001 - recorded: the provider may refuse graph capture
                    row["cuda_graph_error"] = f"{type(exc).__name__}: {exc}"[:300]
            row["pytorch_ms"] = _pytorch_ms(net, x, half=precision == "fp16")
            for mode in ("host", "device", "cuda_graph", "pytorch"):
                if f"{mode}_ms" in row:
                    row[f"{mode}_output_mpix_per_s"] = mpix / row[f"{mode}_ms"] * 1000
            row["device_tflops"] = gflop / row["device_ms"]
            row["device_speedup_vs_pytorch"] = row["pytorch_ms"] / row["device_ms"]
            print(json.dumps({"model": name, **row}), flush=True)
            rows.append(row)
    return {"scale": scale, "macs_per_input_pixel": card["macs_per_input_pixel"], "runs": rows}


def summarise(models: dict[str, dict], peak: dict[str, float]) -> dict:
    """Best output MPix/s per model and path, the service's default shape, and the share of the GPU's peak."""
    out = {}
    for name, m in models.items():
        best = {}
        for mode in ("host", "device", "cuda_graph", "pytorch"):
            key = f"{mode}_output_mpix_per_s"
            top = max((r for r in m["runs"] if key in r), key=lambda r: r[key], default=None)
            if top:
                best[mode] = {"output_mpix_per_s": top[key], "precision": top["precision"], "tile": top["tile"]}
                best[mode]["batch"] = top["batch"]
        dev = max(m["runs"], key=lambda r: r["device_output_mpix_per_s"])
        best["device_fraction_of_matmul_peak"] = dev["device_tflops"] / peak[dev["precision"]]
        out[name] = best
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="fast_x2,turbo_x2", help="comma-separated shipped model names")
    p.add_argument("--shapes", default="128x8,128x64,256x32,512x8,512x32", help="LR tile x batch, comma-separated")
    p.add_argument("--seconds", type=float, default=0.5, help="timing time per measurement")
    p.add_argument("--quick", action="store_true", help="smoke run: one small shape, no result file")
    args = p.parse_args(argv)
    if "CUDAExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs onnxruntime-gpu with a working CUDA provider and torch with CUDA")
    shapes = [tuple(int(v) for v in s.split("x")) for s in ("32x2" if args.quick else args.shapes).split(",")]
    seconds = 0.05 if args.quick else args.seconds
    peak = {"fp32": matmul_tflops(torch.float32), "fp16": matmul_tflops(torch.float16)}
    models = {name: measure_model(name, shapes, seconds) for name in args.models.split(",")}
    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "matmul_peak_tflops": peak,
        "best": summarise(models, peak),
        "models": models,
    }
    print(json.dumps({"gpu": result["gpu"], "peak": peak, "best": result["best"]}, indent=2))
    if not args.quick:
        print("wrote", write_result("gpu", result))


if __name__ == "__main__":
    main()
