"""int8 benchmark: static QDQ quantisation of a shipped model vs its fp32 original, speed and Set5 PSNR.

    python -m bench.int8 [--model turbo_x2] [--data ../shared/datasets/Set5] [--quick]

Quantises every (transposed) convolution with ONNX Runtime's static quantiser (QDQ format,
per-channel int8 weights, uint8 activations), calibrated on 16 LR tiles cut from the
first 16 training images (never from Set5). Then it times both models on the same batch of serving
tiles, and, when the Set5 folder is present, measures both PSNRs the way model.evaluate
does. Writes bench/results/int8.json. The service ships int8 only if it is faster and loses
at most 0.1 dB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from bench.machine import MODELS, RESULTS, timed, write_result
from model.data import list_images, load_rgb
from model.imresize import imresize
from service.runtime.engine import Engine

ROOT = RESULTS.parent.parent
SHARED = ROOT.parent / "shared" / "datasets"


class _Tiles(CalibrationDataReader):
    """Random 64x64 LR tiles, mirror-padded by the context, one from each HR image, bicubic-downscaled."""

    def __init__(self, images: list[np.ndarray], scale: int, context: int, tile: int = 64):
        rng = np.random.default_rng(0)
        self.items = []
        for hr in images:
            lr = imresize(hr, 1 / scale).astype(np.float32) / 255
            y, x = (int(rng.integers(0, n - tile + 1)) for n in lr.shape[:2])
            crop = np.pad(lr[y : y + tile, x : x + tile], ((context, context), (context, context), (0, 0)), "symmetric")
            self.items.append({"lr": np.ascontiguousarray(crop.transpose(2, 0, 1)[None])})
        self._next = iter(self.items)

    def get_next(self) -> dict | None:
        return next(self._next, None)


def quantize(src: Path, dst: Path, images: list[np.ndarray]) -> None:
    """int8 QDQ copy of ``src`` at ``dst`` calibrated on ``images`` (the quantiser keeps the metadata).

    The quantiser writes scratch files beside its input, so it reads a copy in ``dst``'s folder,
    never the shipped folder, where a leftover would be discovered as a model.
    """
    scratch = dst.with_name("fp32_" + src.name)
    shutil.copyfile(src, scratch)
    meta = {p.key: p.value for p in onnx.load(str(scratch)).metadata_props}
    reader = _Tiles(images, int(meta["scale"]), int(meta["context"]))
    quantize_static(
        str(scratch),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv", "ConvTranspose"],
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="turbo_x2")
    p.add_argument("--calibration", default=str(SHARED / "T91-part"), help="training images to calibrate on")
    p.add_argument("--data", default=str(SHARED / "Set5"), help="HR folder for PSNR (skipped if absent)")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny tiles, one repeat, no result file")
    args = p.parse_args(argv)
    tile, repeat = (16, 1) if args.quick else (args.tile, 7)
    src = MODELS / f"{args.model}.onnx"
    if args.quick:  # no dataset needed for the smoke run
        images = [np.random.default_rng(i).integers(0, 256, (300, 300, 3), np.uint8) for i in range(2)]
    elif Path(args.calibration).is_dir():
        images = [load_rgb(path) for path in list_images(args.calibration)[:16]]
    else:
        raise SystemExit(f"no calibration images at {args.calibration}; pass --calibration DIR")

    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / src.name  # same file name, so the engine reads the same variant and scale
        quantize(src, dst, images)
        engines = {
            name: Engine(path, tile=tile, threads=os.cpu_count(), prefer_gpu=False)
            for name, path in (("fp32", src), ("int8", dst))
        }
        key = next(iter(engines["fp32"].specs))
        n = tile + 2 * engines["fp32"].specs[key].context
        x = np.random.default_rng(0).random((args.batch, 3, n, n), dtype=np.float32)
        ms = {name: timed(lambda e=e: e.run(key, x), repeat=repeat) * 1000 for name, e in engines.items()}
        result = {
            "model": args.model,
            "tile": tile,
            "batch": args.batch,
            "fp32_ms": ms["fp32"],
            "int8_ms": ms["int8"],
            "int8_speedup": ms["fp32"] / ms["int8"],
        }
        if Path(args.data).is_dir() and not args.quick:
            from model.evaluate import evaluate

            psnr = {name: evaluate(args.data, key[1], path)["psnr"] for name, path in (("fp32", src), ("int8", dst))}
            result |= {"set5_psnr_fp32": psnr["fp32"], "set5_psnr_int8": psnr["int8"]}
            result["set5_psnr_loss_db"] = psnr["fp32"] - psnr["int8"]
    print(json.dumps(result, indent=2))
    if not args.quick:
        print("wrote", write_result("int8", result))


if __name__ == "__main__":
    main()
