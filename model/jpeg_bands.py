"""Choose the JPEG quality bands that ``model=auto`` uses, by measurement on held-out images (not Set5).

    python -m model.jpeg_bands --scale 2 --clean export/models/fast_x2.onnx \\
        --models export/models/fast-jpeg-*_x2.onnx --data ../shared/datasets/T91-part ../shared/datasets/Sun-Hays80

Every model is run, through the service's inference path, on the images training held out (every ``--holdout``-th
of ``--data``, as ``model.train --holdout`` left them out; centre crops of ``--crop`` pixels), with the LR saved as
JPEG at each quality of ``QUALITIES``. Each quality goes to the model with the best mean Y-PSNR there; a band is the
run of qualities one JPEG model wins, its edges halfway between measured qualities, and the qualities the clean
model wins are left to it. Writes ``bench/results/jpeg-bands-x<scale>.json`` with every figure and the bands, which
``python -m export.to_onnx --evaluate MODEL --jpeg-band LOW HIGH`` then records in each card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from model.data import list_images, load_rgb, split_holdout
from model.evaluate import evaluate_images
from model.train import centre_crop

QUALITIES = (98, 95, 92, 90, 87, 85, 82, 80, 77, 75, 72, 70, 65, 60, 55, 50, 45, 40, 35, 30, 25, 20, 15, 10)
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def mean_psnr(model: Path, images: list[np.ndarray], scale: int, quality: int) -> float:
    names = [str(i) for i in range(len(images))]
    return evaluate_images(images, names, scale, model, jpeg_quality=quality)["psnr"]


def bands(table: dict[str, dict[int, float]], clean: str) -> dict[str, list[int]]:
    """``{model: [low, high]}`` for the JPEG models that win some qualities (see the module docstring)."""
    winners = {q: max(table, key=lambda m: table[m][q]) for q in QUALITIES}
    ordered = sorted(QUALITIES)
    edges = {
        q: (1 if i == 0 else (ordered[i - 1] + q) // 2 + 1, 100 if i == len(ordered) - 1 else (q + ordered[i + 1]) // 2)
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
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--clean", type=Path, required=True, help="the clean model (auto's choice outside every band)")
    p.add_argument("--models", type=Path, nargs="+", required=True, help="the JPEG models")
    p.add_argument("--data", nargs="+", required=True, help="the training folders")
    p.add_argument("--holdout", type=int, default=10)
    p.add_argument("--crop", type=int, default=384)
    args = p.parse_args(argv)
    _, held_out = split_holdout([f for folder in args.data for f in list_images(folder)], args.holdout)
    images = [centre_crop(load_rgb(f), args.crop) for f in held_out]
    models = {m.stem: m for m in [args.clean, *args.models]}
    table = {name: {q: mean_psnr(path, images, args.scale, q) for q in QUALITIES} for name, path in models.items()}
    chosen = bands(table, args.clean.stem)
    result = {
        "scale": args.scale,
        "images": [f.name for f in held_out],
        "crop": args.crop,
        "psnr": {name: {str(q): round(v, 3) for q, v in row.items()} for name, row in table.items()},
        "bands": chosen,
    }
    out = RESULTS / f"jpeg-bands-x{args.scale}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(chosen), "->", out)


if __name__ == "__main__":
    main()
