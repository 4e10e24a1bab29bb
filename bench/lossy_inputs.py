"""Quality on JPEG and WebP inputs through the running service: what ``model=auto`` gains over the clean model
and bicubic.

    python -m bench.lossy_inputs [--data ../shared/datasets/Set5] [--scales 2 3 4] [--quick]
    python -m bench.lossy_inputs --data ../shared/datasets/{T91,BSD200,Sun-Hays80} --held-out BSD200 --crop 384
    python -m bench.lossy_inputs ... --tier quality    # auto with UPSCALER_CLEAN_MODEL=quality

The literature's protocol with the compression users' photos carry: each HR image is mod-cropped, shrunk with
MATLAB bicubic, and that LR saved as JPEG by Pillow at quality q (4:2:0), as lossy WebP by Pillow at quality q
(libwebp's defaults), or as PNG for the clean row. With ``--held-out``, the images are those training held out
(every ``--holdout``-th of the ``--data`` folders, as ``model.train --holdout`` splits them) of the folders named,
centre-cropped to ``--crop``: photos no shipped model trained on. Each file is sent to a real server
(``python -m service``, default settings but ``UPSCALER_CLEAN_MODEL=--tier``) twice: with no model named
(``auto``) and naming the tier's clean model (``model=fast``, what the service ran for every input before
``auto``; ``model=quality`` with ``--tier quality``); both answer PNG
(``format=png``), so the figures measure the model and not a JPEG encoder on the way out. Y-PSNR against the HR,
shave = scale; the baseline is bicubic upscaling of the same decoded (compressed) LR. Writes
``bench/results/lossy-inputs-<data>[-<tier>].json``: the mean per scale and row, and the models ``auto`` ran
(``X-Model``);
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
from model.data import held_out_files, list_images, load_rgb
from model.image_quality import mod_crop, psnr, rgb_to_y
from model.imresize import imresize
from model.train import centre_crop

# (format, quality) of each row: the clean LR as PNG, then JPEG and lossy WebP at four qualities
ROWS = (("PNG", None), *((codec, q) for codec in ("JPEG", "WEBP") for q in (90, 75, 50, 30)))


def encoded(lr: np.ndarray, fmt: str, quality: int | None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(lr).save(buf, format=fmt, **({"quality": quality} if quality else {}))
    return buf.getvalue()


def upscaled(client: httpx.Client, data: bytes, scale: int, model: str | None) -> tuple[np.ndarray, str]:
    params = {"scale": scale, "format": "png", **({"model": model} if model else {})}
    response = client.post("/v1/upscale", content=data, params=params, headers={"Content-Type": "image/*"})
    response.raise_for_status()
    with Image.open(io.BytesIO(response.content)) as im:
        return np.asarray(im.convert("RGB")), response.headers["x-model"]


def measure(
    client: httpx.Client, images: list[np.ndarray], scale: int, fmt: str, quality: int | None, tier: str
) -> dict:
    rows = []
    for img in images:
        hr = mod_crop(img, scale)
        data = encoded(imresize(hr, 1 / scale), fmt, quality)
        with Image.open(io.BytesIO(data)) as im:
            lr = np.asarray(im.convert("RGB"))  # what the server decodes
        y = rgb_to_y(hr)
        auto, ran = upscaled(client, data, scale, None)
        clean, _ = upscaled(client, data, scale, tier)
        rows.append(
            {
                "bicubic": psnr(y, rgb_to_y(imresize(lr, scale)), shave=scale),
                "clean": psnr(y, rgb_to_y(clean), shave=scale),
                "auto": psnr(y, rgb_to_y(auto), shave=scale),
                "model": ran,
            }
        )
    means = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in ("bicubic", "clean", "auto")}
    return {
        "lr": "clean (PNG)" if quality is None else f"{fmt.replace('WEBP', 'WebP')} q{quality}",
        **means,
        "clean_gain": round(means["clean"] - means["bicubic"], 3),
        "auto_gain": round(means["auto"] - means["bicubic"], 3),
        "auto_ran": sorted({r["model"] for r in rows}),
    }


def load(args: argparse.Namespace) -> tuple[str, list[np.ndarray]]:
    """The name of the image set and its images (see the module docstring)."""
    if not args.held_out:
        return args.data[0].name, [load_rgb(f) for f in list_images(args.data[0])]
    files = held_out_files(args.data, args.holdout, args.held_out)
    return f"{'+'.join(args.held_out)}-held-out", [centre_crop(load_rgb(f), args.crop) for f in files]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", default=[ROOT.parent / "shared" / "datasets" / "Set5"])
    p.add_argument("--held-out", nargs="+", help="use the held-out images of these --data folders (names)")
    p.add_argument("--holdout", type=int, default=10)
    p.add_argument("--crop", type=int, default=384)
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--tier", default="fast", help="the clean model auto runs (UPSCALER_CLEAN_MODEL), and its tier")
    p.add_argument("--quick", action="store_true", help="print the JSON, write nothing")
    args = p.parse_args(argv)
    name, images = load(args)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    result: dict = {"data": name, "images": len(images), "tier": args.tier, "scales": {}}
    if args.held_out:
        result["crop"] = args.crop
    env = {"UPSCALER_PORT": str(port), "UPSCALER_CLEAN_MODEL": args.tier}
    with running([sys.executable, "-m", "service"], env, url):
        with httpx.Client(base_url=url, timeout=120) as client:
            for scale in args.scales:
                result["scales"][str(scale)] = [measure(client, images, scale, fmt, q, args.tier) for fmt, q in ROWS]
    for scale, rows in result["scales"].items():
        for r in rows:
            clean = f"{args.tier} {r['clean']:.2f} ({r['clean_gain']:+.2f})"
            auto = f"auto {r['auto']:.2f} ({r['auto_gain']:+.2f}) {r['auto_ran']}"
            print(f"x{scale} {r['lr']:<12} bicubic {r['bicubic']:.2f}  {clean}  {auto}", file=sys.stderr)
    if args.quick:
        print(json.dumps(result))
    else:
        suffix = "" if args.tier == "fast" else f"-{args.tier}"
        print("wrote", write_result(f"lossy-inputs-{name}{suffix}", result))


if __name__ == "__main__":
    main()
