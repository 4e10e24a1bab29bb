"""Start a network of a neighbouring shape from a trained one, so a variant is fine-tuned, not trained afresh.

    python -m model.reshape --checkpoint runs/jpeg75_x2/last.pt --variant deep --out runs/jpeg75_deep_x2/init.pt
    python -m model.train ... --variant deep --init runs/jpeg75_deep_x2/init.pt

Three moves, each keeping the network's function as close to the source's as the new shape allows:

* **Fewer feature channels** (``d``): the extract layer's channels and the expand layer's are pruned
  separately, each keeping the channels that carry the most signal, scored by the norm of the weights that
  make a channel times the norm of those that read it.
* **More mapping layers** (``m``): 3x3 layers are appended that start as the identity (centre tap 1, bias 0,
  PReLU slope 1), so they change nothing until training moves them.
* **More shrunk channels** (``s``): the new channels are made from what the layer before reads (random weights,
  as a fresh network's), but every weight that reads them starts at zero, so the output is unchanged; the zero
  weights get gradients at once and bring the new channels in as training moves them.

The written file is a checkpoint ``--init`` and ``load_network`` read; its lineage says where it came from.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from model.network import VARIANTS, SRNet, config_dict, macs_per_input_pixel
from model.train import lineage, load_network

__all__ = ["reshape"]

log = logging.getLogger("model.reshape")


def _strongest(made_by: torch.Tensor, read_by: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the ``keep`` channels with the largest norm(made) * norm(read)."""
    score = made_by.flatten(1).norm(dim=1) * read_by.flatten(1).norm(dim=1)
    return score.argsort(descending=True)[:keep].sort().values


def reshape(src: SRNet, d: int, m: int, s: int | None = None) -> SRNet:
    """A copy of ``src`` with ``d`` feature channels (at most src's), ``m`` mapping layers (at least src's) and ``s``
    shrunk channels (at least src's; default src's)."""
    c = src.config
    s = s or c.s
    if d > c.d or m < c.m or s < c.s:
        raise ValueError(f"can only prune feature channels, add mapping layers and widen: {c.d}->{d}, {c.m}->{m}")
    dst = SRNet(scale=c.scale, d=d, s=s, m=m, channels=c.channels, channel_slopes=c.channel_slopes)
    old, new = src.state_dict(), dst.state_dict()
    old_s = slice(0, c.s)
    expand, expand_new = 4 + 2 * c.m, 4 + 2 * m  # body index of the expand conv (its PReLU follows)
    ext = _strongest(old["body.0.weight"], old["body.2.weight"].transpose(0, 1), d)
    exp = _strongest(old[f"body.{expand}.weight"], old["upsample.weight"], d)
    slope = (lambda key, idx: old[key][idx]) if c.channel_slopes else (lambda key, idx: old[key])

    new["body.0.weight"], new["body.0.bias"] = old["body.0.weight"][ext], old["body.0.bias"][ext]
    new["body.1.weight"] = slope("body.1.weight", ext)
    # Shrink and the mapping layers src has: its weights in the first c.s channels; new output channels keep
    # dst's random start (they read everything), and no old channel reads a new one (zero weights).
    new["body.2.weight"][old_s] = old["body.2.weight"][:, ext]
    new["body.2.bias"][old_s] = old["body.2.bias"]
    new["body.3.weight"][old_s if c.channel_slopes else slice(None)] = old["body.3.weight"]
    for i in range(4, expand, 2):
        new[f"body.{i}.weight"][old_s] = 0
        new[f"body.{i}.weight"][old_s, old_s] = old[f"body.{i}.weight"]
        new[f"body.{i}.bias"][old_s] = old[f"body.{i}.bias"]
        new[f"body.{i + 1}.weight"][old_s if c.channel_slopes else slice(None)] = old[f"body.{i + 1}.weight"]
    for i in range(expand, expand_new, 2):  # the added ones, as the identity
        weight = torch.zeros_like(new[f"body.{i}.weight"])
        weight[range(s), range(s), 1, 1] = 1
        new[f"body.{i}.weight"], new[f"body.{i}.bias"] = weight, torch.zeros(s)
        new[f"body.{i + 1}.weight"] = torch.ones_like(new[f"body.{i + 1}.weight"])
    new[f"body.{expand_new}.weight"] = torch.zeros_like(new[f"body.{expand_new}.weight"])
    new[f"body.{expand_new}.weight"][:, old_s] = old[f"body.{expand}.weight"][exp]
    new[f"body.{expand_new}.bias"] = old[f"body.{expand}.bias"][exp]
    new[f"body.{expand_new + 1}.weight"] = slope(f"body.{expand + 1}.weight", exp)
    new["upsample.weight"], new["upsample.bias"] = old["upsample.weight"][exp], old["upsample.bias"]
    dst.load_state_dict(new)
    return dst


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint or exported .onnx to start from")
    p.add_argument("--variant", required=True, choices=sorted(VARIANTS), help="the shape to reshape it to")
    p.add_argument("--out", required=True, help="the checkpoint to write")
    args = p.parse_args(argv)
    src, ckpt = load_network(args.checkpoint)
    shape = VARIANTS[args.variant]
    if src.config.channel_slopes != shape.get("channel_slopes", True):
        raise SystemExit(f"{args.variant} differs from the checkpoint's network in its PReLU slopes")
    dst = reshape(src, int(shape["d"]), int(shape["m"]), int(shape["s"]))
    c = src.config
    step = f"reshaped from {ckpt.get('variant', 'fast')} (d {c.d}, s {c.s}, m {c.m}) to {args.variant}"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model_config": config_dict(dst),
            "variant": args.variant,
            "model": dst.state_dict(),
            "lineage": lineage(ckpt) + [f"{step} (d {dst.config.d}, s {dst.config.s}, m {dst.config.m})"],
        },
        args.out,
    )
    log.info("%s; %d -> %d multiply-adds per pixel", step, macs_per_input_pixel(src), macs_per_input_pixel(dst))


if __name__ == "__main__":
    main()
