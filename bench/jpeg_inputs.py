"""Quality on JPEG inputs through the running service: what ``model=auto`` gains over the clean model and bicubic.

    python -m bench.jpeg_inputs [--data ../shared/datasets/Set5] [--scales 2 3 4] [--quick]

The literature's protocol with the compression users' photos carry: each HR image is mod-cropped, shrunk with
MATLAB bicubic, and that LR saved as JPEG by Pillow at quality q (4:2:0), or as PNG for the clean row. Each file
is sent to a real server (``python -m service``, default settings) twice: with no model named (``auto``) and with
``model=fast`` (the clean model, what the service ran for every input before ``auto``); both answer PNG
(``format=png``), so the figures measure the model and not a JPEG encoder on the way out. Y-PSNR against the HR,
shave = scale; the baseline is bicubic upscaling of the same decoded (compressed) LR. Writes
``bench/results/jpeg-inputs.json``: the mean per scale and row, and the model ``auto`` ran (``X-Model``);
``--quick`` prints the JSON instead (the tests run it on small images of their own).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.machine import write_result
from bench.serving import ROOT, free_port, running
from model.data import list_images, load_rgb
from model.image_quality import mod_crop, psnr, rgb_to_y
from model.imresize import imresize

QUALITIES = (None, 90, 75, 50, 30)  # None: the clean LR, as PNG


def encoded(lr: np.ndarray, quality: int | None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(lr).save(
        buf, format="PNG" if quality is None else "JPEG", **({"quality": quality} if quality else {})
    )
    return buf.getvalue()


def upscaled(client: httpx.Client, data: bytes, scale: int, model: str | None) -> tuple[np.ndarray, str]:
    params = {"scale": scale, "format": "png", **({"model": model} if model else {})}
    response = client.post("/v1/upscale", content=data, params=params, headers={"Content-Type": "image/*"})
    response.raise_for_status()
    with Image.open(io.BytesIO(response.content)) as im:
        return np.asarray(im.convert("RGB")), response.headers["x-model"]


def measure(client: httpx.Client, images: list[np.ndarray], scale: int, quality: int | None) -> dict:
    rows = []
    for img in images:
        hr = mod_crop(img, scale)
        data = encoded(imresize(hr, 1 / scale), quality)
        with Image.open(io.BytesIO(data)) as im:
            lr = np.asarray(im.convert("RGB"))  # what the server decodes
        y = rgb_to_y(hr)
        auto, ran = upscaled(client, data, scale, None)
        fast, _ = upscaled(client, data, scale, "fast")
        rows.append(
            {
                "bicubic": psnr(y, rgb_to_y(imresize(lr, scale)), shave=scale),
                "fast": psnr(y, rgb_to_y(fast), shave=scale),
                "auto": psnr(y, rgb_to_y(auto), shave=scale),
                "model": ran,
            }
        )
    means = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in ("bicubic", "fast", "auto")}
    return {
        "lr": "clean (PNG)" if quality is None else f"JPEG q{quality}",
        **means,
        "fast_gain": round(means["fast"] - means["bicubic"], 3),
        "auto_gain": round(means["auto"] - means["bicubic"], 3),
        "auto_ran": sorted({r["model"] for r in rows}),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "Set5")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--quick", action="store_true", help="print the JSON, write nothing")
    args = p.parse_args(argv)
    images = [load_rgb(f) for f in list_images(args.data)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    result: dict = {"data": args.data.name, "images": len(images), "scales": {}}
    with running([sys.executable, "-m", "service"], {"UPSCALER_PORT": str(port)}, url):
        with httpx.Client(base_url=url, timeout=120) as client:
            for scale in args.scales:
                result["scales"][str(scale)] = [measure(client, images, scale, q) for q in QUALITIES]
    for scale, rows in result["scales"].items():
        for r in rows:
            line = f"x{scale} {r['lr']:<12} bicubic {r['bicubic']:.2f}  fast {r['fast']:.2f} ({r['fast_gain']:+.2f})"
            print(f"{line}  auto {r['auto']:.2f} ({r['auto_gain']:+.2f}) {r['auto_ran']}", file=sys.stderr)
    if args.quick:
        print(json.dumps(result))
    else:
        print("wrote", write_result("jpeg-inputs", result))


if __name__ == "__main__":
    main()
