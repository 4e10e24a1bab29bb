"""Export a trained SRNet to ONNX (fp32 and fp16), check it, and write its model card.

    python -m export.to_onnx --checkpoint runs/fast_x2/best.pt --out export/models --val ../shared/datasets/Set5
    python -m export.to_onnx --variant fast --scale 2 --untrained --out /tmp/models   # for tests
    python -m export.to_onnx --derived export/models/fast_x2.onnx   # rewrite an exported model's derived files and card
    python -m export.to_onnx --checkpoint runs/jpeg-mid_x2/last.pt --name fast-jpeg-mid --jpeg-band 41 62 \
        --out export/models --val ../shared/datasets/Set5   # a model for JPEG inputs, chosen by model=auto
    python -m export.to_onnx --evaluate export/models/fast-webp-q50_x2.onnx --webp-band 28 58   # its WebP band
    python -m export.to_onnx --evaluate export/models/fast_x2.onnx --val ../shared/datasets/Set5  # refresh the card

Writes ``<variant>_x<scale>.onnx`` (opset 18; input ``lr`` (N, 3, H + 2c, W + 2c),
output ``sr`` (N, 3, sH, sW), dynamic N/H/W; metadata: variant, scale, context),
``<variant>_x<scale>_fp16.onnx`` (fp16 weights and compute, fp32 inputs and
outputs; for GPUs), ``<variant>_x<scale>_cpu.onnx`` (the same function lowered
for ONNX Runtime's CPU kernels; see ``export.cpu``), ``<variant>_x<scale>_native.npz``
(its weights for the service's own CPU kernels; see ``export.kernel_weights``) and the
model card as ``.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from export.cpu import lower_for_cpu
from export.graph import drop_unused_initializers
from export.kernel_weights import write_native
from model.network import SRNet, build, config_dict, macs_per_input_pixel
from model.reparam import RepSRNet
from model.train import loss_label, training_network
from service.model_files import (
    CPU_GRAPH_SUFFIX,
    FP16_SUFFIX,
    INPUT,
    KERNEL_WEIGHTS_SUFFIX,
    OUTPUT,
    SOURCE_SHA256,
    file_sha256,
    model_stem,
)
from service.runtime.fsrcnn_kernels import NativeNetwork, kernels_unavailable

log = logging.getLogger("export.to_onnx")

OPSET = 18
PARITY_TOLERANCE = 1e-4
PUBLISHED_FSRCNN_SET5 = {2: (37.00, 0.9558), 3: (33.16, 0.9140), 4: (30.71, 0.8657)}
JPEG_REPORT_QUALITIES = (90, 75, 50, 30)  # the LR JPEG qualities every card reports
WEBP_REPORT_QUALITIES = (90, 75, 50, 30)  # and the LR WebP qualities


def export_onnx(net: SRNet, path: Path, variant: str) -> None:
    """Export with dynamic batch, height and width; store variant/scale/context as metadata."""
    net = net.eval().cpu()
    c = net.context
    example = torch.rand(1, 3, 24 + 2 * c, 20 + 2 * c)
    n, h, w = (torch.export.Dim(name, min=1, max=4096) for name in ("N", "H", "W"))
    program = torch.onnx.export(
        net,
        (example,),
        input_names=[INPUT],
        output_names=[OUTPUT],
        opset_version=OPSET,
        dynamic_shapes={"x": {0: n, 2: 2 * c + h, 3: 2 * c + w}},
        dynamo=True,
        verbose=False,
    )
    program.save(str(path))
    model = onnx.load(str(path))
    model.doc_string = f"SRNet {variant} x{net.scale}: (N,3,H+2c,W+2c) in [0,1] -> (N,3,sH,sW), c={c}"
    for k, v in {"variant": variant, "scale": net.scale, "context": c, "config": json.dumps(config_dict(net))}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))
    _fusable_activations(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _fusable_activations(model: onnx.ModelProto) -> None:
    """Rewrite each PRelu whose slope is one constant as LeakyRelu(alpha), in place.

    Same function, but ONNX Runtime fuses LeakyRelu into the preceding Conv,
    while it runs PRelu as a separate pass over memory.
    """
    consts = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        slope = consts.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope is None or int(np.prod(slope.dims)) != 1:
            continue
        alpha = float(numpy_helper.to_array(slope).reshape(()))
        node.op_type = "LeakyRelu"
        del node.input[1]
        node.attribute.append(helper.make_attribute("alpha", alpha))
    drop_unused_initializers(model.graph)


CHECK_SIZES = ((1, 40, 36), (2, 61, 77))  # (N, H, W) of the random inputs every export check runs


def random_inputs(sizes=CHECK_SIZES, seed: int = 0) -> Iterator[torch.Tensor]:
    """Random (N, 3, H, W) inputs in [0, 1], one per size, the same for every check with the same seed."""
    gen = torch.Generator().manual_seed(seed)
    for n, h, w in sizes:
        yield torch.rand(n, 3, h, w, generator=gen)


def parity(net: SRNet, path: Path, sizes=CHECK_SIZES, seed: int = 0) -> float:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch on random inputs of two sizes."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in random_inputs(sizes, seed):
        with torch.no_grad():
            ref = net.eval()(x).numpy()
        got = sess.run(None, {INPUT: x.numpy()})[0]
        if got.shape != ref.shape:
            raise AssertionError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and activations for GPUs, keeping fp32 graph inputs and outputs.

    The graph is convolutions, activations, a slice, a pixel shuffle and an add, so every float initialiser
    becomes fp16 and two Casts wrap the graph (a Cast after ``lr``, one before ``sr``). The derived records the
    SHA-256 of ``src`` (metadata ``source_sha256``), so the engine can refuse it once ``src`` is replaced.
    """
    model = onnx.load(str(src))
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
            graph.initializer[i].CopyFrom(half)
    for node in graph.node:
        node.input[:] = [INPUT + "_fp16" if name == INPUT else name for name in node.input]
        node.output[:] = [OUTPUT + "_fp16" if name == OUTPUT else name for name in node.output]
    nodes = [
        helper.make_node("Cast", [INPUT], [INPUT + "_fp16"], to=TensorProto.FLOAT16),
        *graph.node,
        helper.make_node("Cast", [OUTPUT + "_fp16"], [OUTPUT], to=TensorProto.FLOAT),
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    model.metadata_props.append(onnx.StringStringEntryProto(key=SOURCE_SHA256, value=file_sha256(src)))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


def fold_checked(rep: RepSRNet, sizes=CHECK_SIZES, seed: int = 0) -> tuple[SRNet, float]:
    """The folded plain network of ``rep`` and its max abs difference from ``rep`` computed branch by branch on
    random inputs of two sizes; raises if that exceeds the export tolerance."""
    plain, rep = rep.fold().eval(), rep.eval()
    with torch.no_grad():
        worst = max(float((plain(x) - rep.branchwise(x)).abs().max()) for x in random_inputs(sizes, seed))
    if worst > PARITY_TOLERANCE:
        raise SystemExit(f"the folded network differs from its branches by {worst:.2e} > {PARITY_TOLERANCE}")
    return plain, worst


def _rep_label(options: dict) -> str:
    edges = "Sobel-x, Sobel-y and Laplacian branches, " if options.get("edges") else ""
    return f"main + 1x1 -> kxk expand-squeeze at {options['expand']}x width, {edges}identity where shapes allow"


def write_card(out: Path, stem: str, card: dict) -> None:
    (out / f"{stem}.json").write_text(json.dumps(card, indent=2) + "\n")
    lines = [
        f"# Model card: {stem}",
        "",
        f"SRNet `{card.get('network', card['variant'])}` x{card['scale']}: FSRCNN-style network "
        "(extract, shrink, map, expand) with a `ConvTranspose2d` upsampler plus a fixed bicubic skip.",
        "",
    ]
    lines += ["| fact | value |", "|---|---|"]
    for k in (
        "variant",
        "scale",
        "context",
        "parameters",
        "macs_per_input_pixel",
        "config",
        "opset",
        "fp16_max_abs_diff",
        "cpu_max_abs_diff",
        "native_max_abs_diff",
        "onnx_parity_max_abs_err",
    ):
        lines.append(f"| {k} | {card.get(k)} |")
    for field, codec in (("jpeg_quality", "JPEG"), ("webp_quality", "lossy WebP")):
        if card.get(field):
            lo, hi = card[field]
            lines += ["", f"`model=auto` runs this model for {codec} inputs of estimated quality {lo}-{hi}."]
    tr = card.get("training", {})
    if tr:
        lines += ["", "## Training", ""]
        for k, v in tr.items():
            lines += (
                [f"- {k}:", *(f"  {i}. {line}" for i, line in enumerate(v, 1))]
                if isinstance(v, list)
                else [f"- {k}: {v}"]
            )
    ev = card.get("set5")
    if ev:
        pub = card.get("published_fsrcnn_set5", [None, None])
        lines += [
            "",
            "## Set5 (Y channel, shave = scale, MATLAB bicubic degradation)",
            "",
            "| | PSNR (dB) | SSIM |",
            "|---|---|---|",
            f"| this model | {ev['psnr']:.2f} | {ev['ssim']:.4f} |",
            f"| bicubic | {ev['bicubic_psnr']:.2f} | {ev['bicubic_ssim']:.4f} |",
            f"| FSRCNN (published) | {pub[0]} | {pub[1]} |",
        ]
    for field, codec, subsampling in (("set5_jpeg", "JPEG", "4:2:0"), ("set5_webp", "WebP", "libwebp's defaults")):
        if card.get(field):
            lines += [
                "",
                f"## Set5 with the LR saved as {codec} (Pillow, {subsampling}; Y-PSNR in dB, bicubic of the same "
                "file as baseline)",
                "",
                "| LR | bicubic | this model | gain |",
                "|---|---|---|---|",
            ]
            for q, row in card[field].items():
                gain = row["psnr"] - row["bicubic_psnr"]
                lines.append(f"| {codec} q{q} | {row['bicubic_psnr']:.2f} | {row['psnr']:.2f} | {gain:+.2f} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def evaluation(path: Path, scale: int, val: str) -> dict:
    """The card's quality entries: Set5 on clean LR (``set5``) and with the LR saved as JPEG (``set5_jpeg``) and as
    lossy WebP (``set5_webp``)."""
    from model.evaluate import evaluate

    ev = evaluate(val, scale, path)
    entries = {"set5": {k: round(ev[k], 4) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}}
    log.info("Set5 x%d: model %.3f dB, bicubic %.3f dB", scale, ev["psnr"], ev["bicubic_psnr"])
    for codec, qualities in (("jpeg", JPEG_REPORT_QUALITIES), ("webp", WEBP_REPORT_QUALITIES)):
        entries[f"set5_{codec}"] = {}
        for q in qualities:
            ev = evaluate(val, scale, path, quality=q, codec=codec)
            entries[f"set5_{codec}"][str(q)] = {k: round(ev[k], 4) for k in ("psnr", "bicubic_psnr")}
            log.info(
                "Set5 x%d, %s q%d: model %.3f dB, bicubic %.3f dB", scale, codec, q, ev["psnr"], ev["bicubic_psnr"]
            )
    return entries


def _degradation(tc: dict) -> str:
    copies = f"{tc.get('jpeg_copies', 4)} copies of each image"
    if tc.get("webp"):
        lo, hi = tc["webp"]
        return f"MATLAB bicubic, then the LR saved as lossy WebP by Pillow at a quality drawn from {lo}-{hi}, {copies}"
    if not tc.get("jpeg"):
        return "MATLAB bicubic"
    lo, hi = tc["jpeg"]
    return (
        f"MATLAB bicubic, then the LR saved as JPEG by Pillow at a quality drawn from {lo}-{hi}, 4:2:0 "
        f"(a quarter 4:4:4), {copies}"
    )


def _training_seconds(checkpoint: Path) -> float | None:
    """The run's wall-clock seconds to its last validation, from the log.csv beside the checkpoint."""
    log_csv = checkpoint.parent / "log.csv"
    if not log_csv.exists():
        return None
    rows = log_csv.read_text().split()
    return float(rows[-1].split(",")[-1]) if len(rows) > 1 else None


def _init_label(init: str) -> str:
    """How a run started, for the card: a checkpoint is named by its run folder, an exported model by its file."""
    if not init:
        return "random"
    path = Path(init)
    return f"{path.name} as exported before this run" if path.suffix == ".onnx" else f"{path.parent.name} body"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="training checkpoint (best.pt / last.pt)")
    p.add_argument("--variant", default="fast", help="with --untrained")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=2, help="with --untrained")
    p.add_argument("--untrained", action="store_true", help="export a freshly initialised network")
    p.add_argument("--out", help="output folder (required unless --derived)")
    p.add_argument("--val", help="HR folder (Set5) to measure PSNR/SSIM for the model card")
    p.add_argument("--no-fp16", action="store_true")
    p.add_argument(
        "--derived", nargs="+", type=Path, metavar="MODEL", help="only rewrite these models' derived files, cards"
    )
    p.add_argument("--name", help="the model's name (default: its network variant); files are <name>_x<scale>.*")
    p.add_argument(
        "--jpeg-band", type=int, nargs=2, metavar=("LOW", "HIGH"), help="JPEG qualities model=auto runs it for"
    )
    p.add_argument(
        "--webp-band", type=int, nargs=2, metavar=("LOW", "HIGH"), help="WebP qualities model=auto runs it for"
    )
    p.add_argument(
        "--evaluate", nargs="+", type=Path, metavar="MODEL", help="only refresh these cards' figures (--val)"
    )
    args = p.parse_args(argv)
    if args.derived:
        for path in args.derived:
            rewrite_derived(path)
        return
    if args.evaluate:
        for path in args.evaluate:
            refresh_card(path, args.val, args.jpeg_band, args.webp_band)
        return

    training: dict = {}
    if args.checkpoint:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        net = training_network(ckpt)
        if isinstance(net, RepSRNet):
            net, fold_err = fold_checked(net)
            training["reparameterized"] = (
                f"trained as re-parameterizable blocks ({_rep_label(ckpt['reparam'])}), folded into the plain "
                f"network for export; folded vs branches max abs diff {fold_err:.2e}"
            )
        variant, tc = ckpt["variant"], ckpt["train_config"]
        seconds = _training_seconds(Path(args.checkpoint))
        training |= {
            "data": ", ".join(Path(d).name for d in tc["data"]) + f" (plus copies shrunk by {tc['rescales']})",
            "held_out": f"every {tc['holdout']}th image, for validation" if tc.get("holdout") else "none",
            "degradation": _degradation(tc),
            "steps": ckpt["step"],
            "batch": tc["batch"],
            "lr_patch": tc["patch"],
            "loss": loss_label(tc),
            "optimizer": f"Adam, lr {tc['lr']} with {tc['warmup']} warm-up steps, cosine decay to {tc['lr_min']}",
            "init": _init_label(tc["init"]),
            "lineage": ckpt.get("lineage", []),
            "seed": tc["seed"],
            "device": ckpt.get("device", "cpu"),
            "machine": ckpt.get("machine", "not recorded"),
            "time": f"{seconds:.0f} s" if seconds is not None else "not recorded",
            "checkpoint": f"{Path(args.checkpoint).name} (the run's last step unless named best.pt)",
        }
    elif args.untrained:
        net, variant = build(args.variant, args.scale), args.variant
    else:
        p.error("give --checkpoint or --untrained")
    if not args.out:
        p.error("give --out")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or variant
    stem = model_stem(name, net.scale)
    path = out / f"{stem}.onnx"
    export_onnx(net, path, name)
    err = parity(net, path)
    if err > PARITY_TOLERANCE:
        raise SystemExit(f"ONNX Runtime differs from PyTorch by {err:.2e} > {PARITY_TOLERANCE}")
    log.info("exported %s; ONNX Runtime vs PyTorch max abs error %.2e", path, err)
    card = {
        "variant": name,
        "network": variant,
        "scale": net.scale,
        "context": net.context,
        "config": config_dict(net),
        "parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "macs_per_input_pixel": macs_per_input_pixel(net),
        "opset": OPSET,
        "input": "lr: (N, 3, H + 2*context, W + 2*context) float32 RGB in [0, 1], mirror-padded",
        "output": "sr: (N, 3, scale*H, scale*W) float32 RGB, clip to [0, 1]",
        "onnx_parity_max_abs_err": float(f"{err:.3g}"),
        "trained": bool(args.checkpoint),
        "training": training,
        "published_fsrcnn_set5": list(PUBLISHED_FSRCNN_SET5[net.scale]),
    }
    card.update(_bands(args.jpeg_band, args.webp_band))
    card.update(write_derived(path, net.context, fp16=not args.no_fp16))
    if args.val:
        card.update(evaluation(path, net.scale, args.val))
    write_card(out, stem, card)


def _bands(jpeg_band: list[int] | None, webp_band: list[int] | None) -> dict[str, list[int]]:
    """The card fields of the bands given."""
    return {field: list(band) for field, band in (("jpeg_quality", jpeg_band), ("webp_quality", webp_band)) if band}


def refresh_card(path: Path, val: str | None, jpeg_band: list[int] | None, webp_band: list[int] | None = None) -> None:
    """Re-measure an exported model's figures on ``val`` and set its JPEG and WebP bands, where given (weights
    untouched)."""
    card = json.loads(path.with_suffix(".json").read_text())
    card.update(_bands(jpeg_band, webp_band))
    if val:
        card.update(evaluation(path, card["scale"], val))
    write_card(path.parent, path.stem, card)


def write_derived(path: Path, context: int, fp16: bool = True) -> dict[str, float | None]:
    """Write the _fp16 (unless ``fp16`` is false), _cpu and kernel weights files of ``path``; return card entries."""
    entries = {}
    writers = {
        "fp16": (export_fp16, FP16_SUFFIX + ".onnx"),
        "cpu": (lower_for_cpu, CPU_GRAPH_SUFFIX + ".onnx"),
        "native": (write_native, KERNEL_WEIGHTS_SUFFIX + ".npz"),
    }
    for name, (write, suffix) in writers.items():
        if name == "fp16" and not fp16:
            continue
        derived = path.with_name(path.stem + suffix)
        write(path, derived)
        why_not = kernels_unavailable() if name == "native" else None
        if why_not:  # recorded as such in the card
            log.warning("wrote %s; not compared with %s: %s", derived, path.name, why_not)
            entries["native_max_abs_diff"] = None
            continue
        err = derived_max_abs_diff(path, derived, context)
        if name != "fp16" and err > PARITY_TOLERANCE:
            raise SystemExit(f"{derived} differs from {path} by {err:.2e} > {PARITY_TOLERANCE}")
        entries[f"{name}_max_abs_diff"] = float(f"{err:.3g}")
        log.info("wrote %s; max abs difference from %s %.2e", derived, path.name, err)
    return entries


def derived_max_abs_diff(model: Path, derived: Path, context: int) -> float:
    """Max abs difference of a derived (ONNX, on the CPU provider, or native) from its model on a random tile."""
    x = np.random.default_rng(0).random((1, 3, 64 + 2 * context, 64 + 2 * context), dtype=np.float32)
    a = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {INPUT: x})[0]
    if derived.suffix == ".npz":
        b = NativeNetwork(derived).run(x)
    else:
        b = ort.InferenceSession(str(derived), providers=["CPUExecutionProvider"]).run([OUTPUT], {INPUT: x})[0]
    return float(np.abs(a - b).max())


def rewrite_derived(path: Path) -> None:
    """Rewrite the derived files of an already exported model and refresh its card, if it has one (the weights are not
    touched)."""
    context = int({p.key: p.value for p in onnx.load(str(path)).metadata_props}["context"])
    entries = write_derived(path, context)
    card_path = path.with_suffix(".json")
    if card_path.exists():
        write_card(path.parent, path.stem, json.loads(card_path.read_text()) | entries)


if __name__ == "__main__":
    main()
