"""Evaluate a shipped ONNX model with the super-resolution literature's protocol.

    python -m model.evaluate --data ../shared/datasets/Set5 --scale 2 [--model FILE.onnx] [--jpeg Q | --webp Q] [--json]

HR images are mod-cropped to the scale, degraded with MATLAB-compatible
bicubic ``imresize`` (and, with ``--jpeg Q``, that LR saved as JPEG by Pillow
at quality Q, 4:2:0, as most photos come; with ``--webp Q`` as lossy WebP), and
upscaled twice: by the model, through ONNX Runtime and the service's own tiled
inference path, and by bicubic ``imresize`` of the same (compressed) LR.
PSNR and SSIM are measured on the BT.601 Y channel (16-235) of the 8-bit
results with ``scale`` pixels shaved at each border. No torch is imported.
"""

from __future__ import annotations

import argparse
import json
from functools import cache
from pathlib import Path

import numpy as np

from model.data import degrade, list_images, load_rgb
from model.image_quality import mod_crop, psnr, rgb_to_y, ssim
from model.imresize import imresize
from service.model_files import default_model_dir
from service.runtime.engine import Engine, to_pixels

DEFAULT_MODELS = default_model_dir()


@cache
def _engine(model: Path, tile: int, written: int) -> Engine:
    """One engine per model file as last written (``written``: its mtime in ns), reused by every evaluation of it in
    this process: export scores each model at five degradations."""
    return Engine(model, tile=tile, prefer_gpu=False)


def evaluate(
    data: str | Path,
    scale: int,
    model: str | Path | None = None,
    tile: int = 128,
    quality: int | None = None,
    codec: str = "jpeg",
) -> dict:
    """Per-image and mean PSNR/SSIM of the model and of bicubic on the images of ``data``; see the module
    docstring."""
    model = Path(model) if model else DEFAULT_MODELS / f"fast_x{scale}.onnx"
    paths = list_images(data)
    result = evaluate_images([load_rgb(p) for p in paths], [p.name for p in paths], scale, model, tile, quality, codec)
    return {"model": str(model), **result}


def evaluate_images(
    hr_images: list[np.ndarray],
    names: list[str],
    scale: int,
    model: Path,
    tile: int = 128,
    quality: int | None = None,
    codec: str = "jpeg",
) -> dict:
    """As ``evaluate``, on HR images already loaded (``model.codec_bands`` passes crops of held-out images); the LR
    saved as ``codec`` at ``quality`` where that is given."""
    engine = _engine(Path(model), tile, Path(model).stat().st_mtime_ns)
    key = next(iter(engine.specs))
    if key[1] != scale:
        raise ValueError(f"{model} is a x{key[1]} model, not x{scale}")
    images = []
    for img, name in zip(hr_images, names, strict=True):
        hr = mod_crop(img, scale)
        lr = degrade(hr, scale, quality, codec)
        sr = to_pixels(engine.upscale(key, lr.astype(np.float32) / 255), np.uint8)
        bic = imresize(lr, scale)
        y_hr, y_sr, y_bic = rgb_to_y(hr), rgb_to_y(sr), rgb_to_y(bic)
        images.append(
            {
                "image": name,
                "psnr": psnr(y_hr, y_sr, shave=scale),
                "ssim": ssim(y_hr, y_sr, shave=scale),
                "bicubic_psnr": psnr(y_hr, y_bic, shave=scale),
                "bicubic_ssim": ssim(y_hr, y_bic, shave=scale),
            }
        )
    means = {k: float(np.mean([im[k] for im in images])) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
    return {"scale": scale, "codec": codec if quality else None, "quality": quality, **means, "images": images}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of HR images (e.g. Set5)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--model", help="ONNX model (default: the shipped fast model for the scale)")
    lossy = p.add_mutually_exclusive_group()
    lossy.add_argument("--jpeg", type=int, metavar="Q", help="save each LR as JPEG at quality Q first")
    lossy.add_argument("--webp", type=int, metavar="Q", help="save each LR as lossy WebP at quality Q first")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    codec = "webp" if args.webp else "jpeg"
    result = evaluate(args.data, args.scale, args.model, quality=args.webp or args.jpeg, codec=codec)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    saved = f"  LR saved as {codec.upper()} q{result['quality']}" if result["quality"] else ""
    print(f"{result['model']}  x{args.scale}{saved}")
    print(f"{'image':<20}{'PSNR':>8}{'SSIM':>8}{'bic PSNR':>10}{'bic SSIM':>10}")
    for im in result["images"] + [{"image": "mean", **result}]:
        print(
            f"{im['image']:<20}{im['psnr']:8.2f}{im['ssim']:8.4f}{im['bicubic_psnr']:10.2f}{im['bicubic_ssim']:10.4f}"
        )


if __name__ == "__main__":
    main()
