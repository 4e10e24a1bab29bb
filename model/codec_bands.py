"""Choose the quality bands that ``model=auto`` uses for JPEG or lossy WebP inputs, by measurement on held-out images
(not Set5).

    python -m model.codec_bands --codec jpeg --scale 2 --clean export/models/fast_x2.onnx \\
        --models export/models/fast-jpeg-*_x2.onnx --data ../shared/datasets/T91-part ../shared/datasets/Sun-Hays80
    python -m model.codec_bands --codec webp --scale 2 --clean export/models/fast_x2.onnx \\
        --models export/models/fast-jpeg-*_x2.onnx export/models/fast-webp-*_x2.onnx \\
        --data ../shared/datasets/{T91,BSD200,Sun-Hays80} --measure-on BSD200

Every model is run, through the service's inference path, on the images training held out (every ``--holdout``-th
of ``--data``, as ``model.train --holdout`` left them out; only those of the ``--measure-on`` folders, where the
models' lineage trained on the others; centre crops of ``--crop`` pixels), with the LR saved in ``--codec`` at each
quality of ``QUALITIES``. Each quality goes to the model with the best mean Y-PSNR there; a band is the run of
qualities one model wins, its edges halfway between measured qualities, and the qualities the clean model wins are
left to it. The qualities are those the service reads back from the files (for JPEG the encoder's own; for WebP the
estimate from the frame header, ``service.imageio.webp_quality``, which lies within a point or two of the
encoder's), so a band holds what ``auto`` will see. Writes ``bench/results/<codec>-bands-x<scale>.json`` (with
``-<clean>`` after it for a clean model other than ``fast``: another tier's bands) with every
figure and the bands, which ``python -m export.to_onnx --evaluate MODEL --jpeg-band LOW HIGH`` (or
``--webp-band``) then records in each card.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from model.data import CODECS, held_out_files, load_rgb, lossy_encode
from model.evaluate import evaluate_images
from model.image_quality import mod_crop
from model.imresize import imresize
from model.train import centre_crop
from service.imageio.jpeg_quality import estimate_quality
from service.imageio.webp_quality import read_quality

QUALITIES = {
    "jpeg": (98, 95, 92, 90, 87, 85, 82, 80, 77, 75, 72, 70, 65, 60, 55, 50, 45, 40, 35, 30, 25, 20, 15, 10),
    "webp": (98, 95, 90, 85, 80, 75, 70, 65, 60, 55, 50, 45, 40, 35, 30, 25, 20, 15, 10, 5),
}
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def mean_psnr(model: Path, images: list[np.ndarray], scale: int, codec: str, quality: int) -> float:
    names = [str(i) for i in range(len(images))]
    return evaluate_images(images, names, scale, model, quality=quality, codec=codec)["psnr"]


def quality_read(images: list[np.ndarray], scale: int, codec: str, quality: int) -> int:
    """The quality the service reads, on average, from the LR of ``images`` saved in ``codec`` at ``quality``."""
    reads = []
    for hr in images:
        data = lossy_encode(imresize(mod_crop(hr, scale), 1 / scale), codec, quality)
        if codec == "jpeg":
            with Image.open(io.BytesIO(data)) as im:
                reads.append(estimate_quality(im.quantization).quality)
        else:
            reads.append(read_quality(data).quality)
    return round(float(np.mean(reads)))


def bands(table: dict[str, dict[int, float]], clean: str, read: dict[int, int] | None = None) -> dict[str, list[int]]:
    """``{model: [low, high]}`` for the models that win some qualities (see the module docstring); ``read`` maps each
    measured quality to the one the service reads back (the same where absent)."""
    measured = next(iter(table.values())).keys()
    winners = {q: max(table, key=lambda m: table[m][q]) for q in measured}
    ordered = sorted(measured, key=lambda q: (read or {}).get(q, q))
    seen = [(read or {}).get(q, q) for q in ordered]
    edges = {
        q: (
            1 if i == 0 else (seen[i - 1] + seen[i]) // 2 + 1,
            100 if i == len(ordered) - 1 else (seen[i] + seen[i + 1]) // 2,
        )
        for i, q in enumerate(ordered)
    }
    chosen: dict[str, list[int]] = {}
    for q in ordered:
        model = winners[q]
        if model == clean:
            continue
        low, high = edges[q]
        chosen[model] = [min(chosen.get(model, [low])[0], low), max(chosen.get(model, [0, high])[1], high)]
    return chosen


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", choices=CODECS, default="jpeg")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--clean", type=Path, required=True, help="the clean model (auto's choice outside every band)")
    p.add_argument("--models", type=Path, nargs="+", required=True, help="the models for compressed inputs")
    p.add_argument("--data", nargs="+", required=True, help="the training folders")
    p.add_argument("--measure-on", nargs="+", help="measure only the held-out images of these folders (names)")
    p.add_argument("--holdout", type=int, default=10)
    p.add_argument("--crop", type=int, default=384)
    p.add_argument("--name", help="the result's file name (default <codec>-bands-x<scale>, -<tier> past fast's)")
    args = p.parse_args(argv)
    held_out = held_out_files(args.data, args.holdout, args.measure_on)
    images = [centre_crop(load_rgb(f), args.crop) for f in held_out]
    models = {m.stem: m for m in [args.clean, *args.models]}
    qualities = QUALITIES[args.codec]
    table = {
        name: {q: mean_psnr(path, images, args.scale, args.codec, q) for q in qualities}
        for name, path in models.items()
    }
    read = {q: quality_read(images, args.scale, args.codec, q) for q in qualities}
    chosen = bands(table, args.clean.stem, read)
    result = {
        "codec": args.codec,
        "scale": args.scale,
        "images": [f"{f.parent.name}/{f.name}" for f in held_out],
        "crop": args.crop,
        "quality_read": {str(q): r for q, r in read.items()},
        "psnr": {name: {str(q): round(v, 3) for q, v in row.items()} for name, row in table.items()},
        "bands": chosen,
    }
    clean = args.clean.stem.removesuffix(f"_x{args.scale}")  # a tier's bands are measured against its clean model
    name = args.name or f"{args.codec}-bands-x{args.scale}" + ("" if clean == "fast" else f"-{clean}")
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(chosen), "->", out)


if __name__ == "__main__":
    main()
