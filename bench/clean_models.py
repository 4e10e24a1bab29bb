"""Clean-input quality of candidate models against the shipped ``fast``, on images held out of training.

    python -m bench.clean_models --scale 2 --models export/models/fast_x2.onnx runs/rep_x2/rep_x2.onnx \
        [--labels fast rep] [--data ../shared/datasets/{T91,BSD200,Sun-Hays80}] [--held-out BSD200] [--crop 0]

The images are every ``--holdout``-th of the ``--data`` folders (as ``model.train --holdout`` splits them), of the
folders ``--held-out`` names: by default BSD200's, because the older shipped lineages trained on T91-part and
Sun-Hays80, so only BSD200's held-out photos are unseen by every model compared. Each model runs as
``model.evaluate`` runs it (ONNX Runtime through the service's tiling; MATLAB-bicubic LR, Y-PSNR, shave = scale);
the figure that matters is each model's gain over bicubic and that gain's difference from the first model's
(the baseline, normally the shipped ``fast``). This is the measure model choices are made on; Set5 is only reported.
Writes ``bench/results/clean-models-x<scale>.json`` (``--name`` overrides).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.machine import write_result
from bench.serving import ROOT
from model.data import held_out_files, load_rgb
from model.evaluate import evaluate_images
from model.train import centre_crop

DATASETS = ROOT.parent / "shared" / "datasets"


def held_out_images(data: list[Path], names: list[str], holdout: int, crop: int) -> tuple[list, list[str]]:
    """The held-out images of the folders ``names`` (see the module docstring) and their file names."""
    files = held_out_files(data, holdout, names)
    return [centre_crop(load_rgb(f), crop) for f in files], [f"{f.parent.name}/{f.name}" for f in files]


def compare(models: list[Path], labels: list[str], images: list, names: list[str], scale: int) -> list[dict]:
    """One row per model: mean Y-PSNR, bicubic's, the gain and the gain's difference from the first model."""
    rows = []
    for model, label in zip(models, labels, strict=True):
        result = evaluate_images(images, names, scale, model)
        rows.append(
            {
                "model": label,
                "psnr": round(result["psnr"], 3),
                "bicubic_psnr": round(result["bicubic_psnr"], 3),
                "gain": round(result["psnr"] - result["bicubic_psnr"], 3),
            }
        )
    for row in rows:
        row["gain_over_baseline"] = round(row["gain"] - rows[0]["gain"], 3)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--models", type=Path, nargs="+", required=True, help="ONNX models; the first is the baseline")
    p.add_argument("--data", type=Path, nargs="+", default=[DATASETS / n for n in ("T91", "BSD200", "Sun-Hays80")])
    p.add_argument("--held-out", nargs="+", default=["BSD200"], help="folders whose held-out images are used")
    p.add_argument("--holdout", type=int, default=10)
    p.add_argument("--crop", type=int, default=0, help="centre-crop each image to this many pixels a side; 0 = whole")
    p.add_argument("--labels", nargs="+", help="what to call each model in the result (default: its path)")
    p.add_argument("--name", help="result file name (default clean-models-x<scale>)")
    args = p.parse_args(argv)
    labels = args.labels or [str(m) for m in args.models]
    if len(labels) != len(args.models):
        p.error("give one label per model")
    images, names = held_out_images(args.data, args.held_out, args.holdout, args.crop)
    rows = compare(args.models, labels, images, names, args.scale)
    for r in rows:
        print(f"{r['model']:<44} {r['psnr']:.3f}  gain {r['gain']:+.3f}  vs baseline {r['gain_over_baseline']:+.3f}")
    result = {"scale": args.scale, "images": f"{'+'.join(args.held_out)} held out (every {args.holdout}th)"}
    result |= {"count": len(images), "crop": args.crop, "models": rows}
    print("wrote", write_result(args.name or f"clean-models-x{args.scale}", result), file=sys.stderr)


if __name__ == "__main__":
    main()
