"""Write a Triton Inference Server model repository for the shipped models (no torch needed).

    python -m export.triton --out triton-models                  # GPU: TensorRT (FP16) inside ONNX Runtime
    python -m export.triton --out triton-models --accelerator cuda --precision fp32
    python -m export.triton --out triton-models --kind cpu

For every ``<variant>_x<scale>.onnx`` of the model folder (what the service would serve) it writes
``<variant>_x<scale>/1/model.onnx`` and ``<variant>_x<scale>/config.pbtxt``: the ONNX Runtime backend with
the network's one fixed tile shape, ``(3, T + 2c, T + 2c)`` in and ``(3, sT, sT)`` out, batches of up to
``--max-batch`` tiles formed by Triton's dynamic batcher, warmed up at start. Triton does not cut tiles:
its clients do, as deploy/triton/README.md describes.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from service.model_files import ModelSpec, default_model_dir, discover_models

__all__ = ["TritonOptions", "model_config", "write_repository", "main"]

log = logging.getLogger("export.triton")

_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


@dataclass(frozen=True)
class TritonOptions:
    tile: int = 128  # LR core T of a tile, as UPSCALER_TILE
    max_batch: int = 8  # as UPSCALER_MAX_BATCH
    max_queue_delay_us: int = 2000  # as UPSCALER_MAX_WAIT_MS
    instances: int = 1  # model instances per GPU (or on the CPU)
    kind: str = "gpu"  # gpu | cpu
    accelerator: str = "tensorrt"  # tensorrt | cuda (GPU only)
    precision: str = "fp16"  # fp16 | fp32 (GPU only)
    trt_cache: str = "/tmp/triton-trt-cache"  # where TensorRT keeps built engines between restarts


@dataclass(frozen=True)
class TensorInfo:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: list  # as ONNX Runtime reports them: ints, or strings/None for dynamic axes


def _io(path: Path) -> tuple[TensorInfo, TensorInfo]:
    """The single input and output of a model, without optimising it (that is Triton's work)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    return (
        TensorInfo(inp.name, _ORT_TYPES[inp.type], list(inp.shape)),
        TensorInfo(out.name, _ORT_TYPES[out.type], list(out.shape)),
    )


def _check_fixed_shape(info: TensorInfo, dims: list[int], path: Path) -> None:
    """The model's static axes must equal the fixed (batchless) shape written into the config."""
    model_dims = info.dims[1:]  # drop N: Triton adds it through max_batch_size
    if len(model_dims) != len(dims):
        raise ValueError(f"{path.name}: {info.name} has shape {info.dims}, not (N, *{dims})")
    if any(isinstance(m, int) and m != d for m, d in zip(model_dims, dims, strict=True)):
        raise ValueError(f"{path.name}: {info.name} has shape {info.dims}, which cannot take (N, *{dims})")


def _params(pairs: dict[str, str], indent: str) -> str:
    return "".join(f'{indent}parameters {{ key: "{k}" value: "{v}" }}\n' for k, v in pairs.items())


def model_config(name: str, spec: ModelSpec, lr: TensorInfo, sr: TensorInfo, opt: TritonOptions) -> str:
    """config.pbtxt text (Triton's ModelConfig protobuf in text format) for one model."""
    side_in, side_out = opt.tile + 2 * spec.context, spec.scale * opt.tile
    dims_in, dims_out = [3, side_in, side_in], [3, side_out, side_out]

    def dims(d: list[int]) -> str:
        return "[ " + ", ".join(map(str, d)) + " ]"

    lines = [
        f"# Written by `python -m export.triton` from {spec.path.name}: variant {spec.variant}, x{spec.scale},",
        f"# context c={spec.context}, tile T={opt.tile}. Clients cut {side_in}x{side_in} tiles from the image",
        f"# mirror-padded by c and stitch the {side_out}x{side_out} outputs (see deploy/triton/README.md).",
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        'backend: "onnxruntime"',
        f"max_batch_size: {opt.max_batch}",
        "input [",
        f'  {{ name: "{lr.name}" data_type: {lr.data_type} format: FORMAT_NCHW dims: {dims(dims_in)} }}',
        "]",
        "output [",
        f'  {{ name: "{sr.name}" data_type: {sr.data_type} dims: {dims(dims_out)} }}',
        "]",
        "# Tiles of concurrent requests share executions, as in the service's batcher.",
        f"dynamic_batching {{ max_queue_delay_microseconds: {opt.max_queue_delay_us} }}",
        "instance_group [",
        f"  {{ count: {opt.instances} kind: {'KIND_GPU' if opt.kind == 'gpu' else 'KIND_CPU'} }}",
        "]",
    ]
    if opt.kind == "gpu" and opt.accelerator == "tensorrt":
        shape = "x".join(map(str, dims_in))
        trt = {
            "precision_mode": opt.precision.upper(),
            "max_workspace_size_bytes": str(1 << 30),
            # One optimisation profile for the one tile shape, batch 1 to max_batch: no engine rebuilds.
            "trt_profile_min_shapes": f"{lr.name}:1x{shape}",
            "trt_profile_opt_shapes": f"{lr.name}:{opt.max_batch}x{shape}",
            "trt_profile_max_shapes": f"{lr.name}:{opt.max_batch}x{shape}",
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": f"{opt.trt_cache}/{name}",
        }
        lines += [
            "# TensorRT inside ONNX Runtime; nodes it cannot take fall back to the CUDA execution provider.",
            "optimization { execution_accelerators {",
            "  gpu_execution_accelerator [ {",
            '    name: "tensorrt"',
            _params(trt, "    ").rstrip("\n"),
            "  } ]",
            "} }",
        ]
    elif opt.kind == "gpu":
        lines += [
            "optimization { execution_accelerators {",
            '  gpu_execution_accelerator [ { name: "cuda" } ]',
            "} }",
        ]
    if opt.kind == "gpu":
        # Exhaustive cuDNN search (0) pays off with one fixed tile shape, as in the service's engine.
        lines.append('parameters { key: "cudnn_conv_algo_search" value: { string_value: "0" } }')
    lines += [
        "# One full batch before the model is marked ready: TensorRT engines, cuDNN tuning, memory arenas.",
        "model_warmup [ {",
        '  name: "full_batch"',
        f"  batch_size: {opt.max_batch}",
        f'  inputs {{ key: "{lr.name}" value: {{',
        f"    data_type: {lr.data_type} dims: {dims(dims_in)} zero_data: true",
        "  } }",
        "} ]",
    ]
    return "\n".join(lines) + "\n"


def write_repository(out: Path, models: Path | None = None, opt: TritonOptions = TritonOptions()) -> list[Path]:
    """Write ``<name>/1/model.onnx`` and ``<name>/config.pbtxt`` for every model found; return the model folders."""
    specs = discover_models(models or default_model_dir())
    if not specs:
        raise FileNotFoundError(f"no <variant>_x<scale>.onnx models in {models}")
    written = []
    for (variant, scale), spec in sorted(specs.items()):
        name = f"{variant}_x{scale}"
        # Without TensorRT, fp16 compute comes from the _fp16 file (fp32 inputs and outputs, like the fp32 model).
        use_fp16_file = opt.kind == "gpu" and opt.accelerator == "cuda" and opt.precision == "fp16"
        source = spec.fp16_path if use_fp16_file and spec.fp16_path else spec.path
        lr, sr = _io(source)
        side_in = opt.tile + 2 * spec.context
        _check_fixed_shape(lr, [3, side_in, side_in], source)
        folder = out / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / "1" / "model.onnx")
        (folder / "config.pbtxt").write_text(model_config(name, spec, lr, sr, opt))
        log.info("%s: %s, input %s (N, 3, %d, %d)", name, source.name, lr.name, side_in, side_in)
        written.append(folder)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m export.triton", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="model repository folder to write (created if missing)")
    p.add_argument("--models", type=Path, default=None, help="folder of models (default: the shipped ones)")
    d = TritonOptions()
    p.add_argument("--tile", type=int, default=d.tile, help="LR tile core T (as UPSCALER_TILE)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="max_batch_size (as UPSCALER_MAX_BATCH)")
    p.add_argument("--max-queue-delay-us", type=int, default=d.max_queue_delay_us, help="dynamic batching wait")
    p.add_argument("--instances", type=int, default=d.instances, help="model instances per device")
    p.add_argument("--kind", choices=["gpu", "cpu"], default=d.kind)
    p.add_argument("--accelerator", choices=["tensorrt", "cuda"], default=d.accelerator, help="GPU execution")
    p.add_argument("--precision", choices=["fp16", "fp32"], default=d.precision, help="GPU compute precision")
    p.add_argument("--trt-cache", default=d.trt_cache, help="TensorRT engine cache folder inside the server")
    a = p.parse_args(argv)
    if a.tile < 16 or a.max_batch < 1 or a.instances < 1 or a.max_queue_delay_us < 0:
        p.error("--tile >= 16, --max-batch >= 1, --instances >= 1, --max-queue-delay-us >= 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    opt = TritonOptions(
        tile=a.tile,
        max_batch=a.max_batch,
        max_queue_delay_us=a.max_queue_delay_us,
        instances=a.instances,
        kind=a.kind,
        accelerator=a.accelerator,
        precision=a.precision,
        trt_cache=a.trt_cache,
    )
    folders = write_repository(a.out, a.models, opt)
    print(f"wrote {len(folders)} models to {a.out}: {', '.join(f.name for f in folders)}")


if __name__ == "__main__":
    main()
