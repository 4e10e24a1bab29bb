"""Which filter resamples the model's output to a size between its scales, by measurement on held-out photos.

    python -m bench.resampling [--data ../shared/datasets/BSD200] [--images 24] [--crop 252] [--quick]

A size between the model scales (x1.5, x2.5, x3.5, or a width such as 1920 from 1200) is made by the smallest model
scale that reaches it, then resampled down to the exact size (service/imageio/resampling.py). For each factor
f = p/2 and each photo (a centre crop whose sides are multiples of p, of images the shipped models were not
trained on: BSD200 is not in their cards' training data), the HR is shrunk by MATLAB bicubic to the LR, the LR is
upscaled by the shipped ``fast`` model at ceil(f) and at the scale above, as the service's engine runs it (8-bit
pixels), and that is resampled to the HR's size with each of Pillow's filters. Y-PSNR against the HR (shave =
ceil(f)), as a gain over MATLAB bicubic upscaling of the same LR by f. Writes bench/results/resampling.json;
``--quick`` prints it instead. Set5 is not used: this chooses a default.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

from bench.machine import MODELS, write_result
from model.data import list_images, load_rgb
from model.image_quality import psnr, rgb_to_y
from model.imresize import imresize
from service.runtime.engine import Engine, to_pixels

FACTORS = (1.5, 2.5, 3.5)
FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
}


def centre_crop(img: np.ndarray, side: int, multiple: int) -> np.ndarray:
    """The centre ``side`` x ``side`` (or less) with both sides a multiple of ``multiple``."""
    h, w = img.shape[:2]
    ch, cw = min(h, side), min(w, side)
    ch, cw = ch - ch % multiple, cw - cw % multiple
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top : top + ch, left : left + cw]


def gains(engine: Engine, hr: np.ndarray, factor: float) -> dict[str, float]:
    """Y-PSNR gain over bicubic of each model scale x filter, for one HR image and factor."""
    lr = imresize(hr, 1 / factor)
    y, shave = rgb_to_y(hr), math.ceil(factor)
    size = (hr.shape[1], hr.shape[0])
    bicubic = psnr(y, rgb_to_y(imresize(lr, factor)[: hr.shape[0], : hr.shape[1]]), shave)
    out = {}
    for scale in (math.ceil(factor), math.ceil(factor) + 1):
        if scale > 4:
            continue
        sr = to_pixels(engine.upscale(("fast", scale), lr.astype(np.float32) / 255), np.uint8)
        for name, flt in FILTERS.items():
            resampled = np.asarray(Image.fromarray(sr).resize(size, flt))
            out[f"x{scale} {name}"] = psnr(y, rgb_to_y(resampled), shave) - bicubic
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(MODELS.parents[1].parent / "shared" / "datasets" / "BSD200"))
    p.add_argument("--images", type=int, default=24, help="how many photos (spread evenly over the folder)")
    p.add_argument("--crop", type=int, default=252, help="centre crop side")
    p.add_argument("--quick", action="store_true", help="two small generated images; print, do not write")
    args = p.parse_args(argv)
    engine = Engine(MODELS, prefer_gpu=False, variants=["fast"])
    if args.quick:
        rng = np.random.default_rng(0)
        photos = [(rng.random((42, 42, 3)) * 255).astype(np.uint8) for _ in range(2)]
        names = ["noise-1", "noise-2"]
    else:
        files = list_images(args.data)
        files = files[:: max(1, len(files) // args.images)][: args.images]
        photos, names = [load_rgb(f) for f in files], [f.name for f in files]
    result: dict = {"data": Path(args.data).name, "images": names, "crop": args.crop, "factors": {}}
    for factor in FACTORS:
        rows = [gains(engine, centre_crop(img, args.crop, int(factor * 2)), factor) for img in photos]
        mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        result["factors"][f"x{factor:g}"] = {
            "gain_over_bicubic_db": dict(sorted(mean.items(), key=lambda kv: -kv[1])),
            "best": max(mean, key=mean.get),
        }
        print(f"x{factor:g}", {k: round(v, 3) for k, v in sorted(mean.items(), key=lambda kv: -kv[1])}, flush=True)
    if args.quick:
        print(json.dumps(result))
    else:
        print(write_result("resampling", result))
    return result


if __name__ == "__main__":
    main()
