"""Train an SRNet variant on folders of images.

    python -m model.train --data ../shared/datasets/T91-part ../shared/datasets/Sun-Hays80 \
        --val ../shared/datasets/Set5 --scale 2 --variant fast --steps 30000 --out runs/fast_x2

Checkpoints (``last.pt``, ``best.pt`` in ``--out``) store the network's
constructor arguments beside its weights, so ``--resume`` and the ONNX export
rebuild exactly the same network. ``--init`` starts from another checkpoint's
body (e.g. the x2 model when training x3 or x4); the upsampler, whose shape
depends on the scale, is trained afresh. ``--init`` also takes an exported
``.onnx`` file, so a shipped model can be fine-tuned without its checkpoint.

``--jpeg LOW HIGH`` trains for JPEG-compressed inputs: every LR image is also
saved as JPEG at qualities drawn from that range (``model.data.LossyDegradation``),
and validation uses the range's middle quality; ``--webp LOW HIGH`` does the same
with lossy WebP. ``--reparam`` trains every convolution as a re-parameterizable block (``model.reparam``: ECB
branches), each starting at the plain convolution (a fresh one, or ``--init``'s); checkpoints
keep the branches, and ``load_network`` folds them into the plain network that is exported.
``--holdout N`` keeps every
N-th training image out of training and validates on those instead of ``--val``:

    python -m model.train --data ../shared/datasets/T91-part ../shared/datasets/Sun-Hays80 --holdout 10 \
        --scale 2 --jpeg 40 62 --init export/models/fast_x2.onnx --steps 12000 --out runs/fast_jpeg50_x2
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.data import LossyDegradation, PatchSampler, degrade, list_images, load_rgb, make_pairs, split_holdout
from model.image_quality import BT601_LUMA, mod_crop, psnr, rgb_to_y
from model.network import SRNet, build, config_dict, load_weights, pad_for_inference
from model.onnx_weights import weights_from_onnx
from model.reparam import RepOptions, RepSRNet
from service.host import cpu_model

log = logging.getLogger("model.train")


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)  # training image folders
    val: str = ""  # validation image folder (Set5); empty = no validation
    scale: int = 2  # upscaling factor
    variant: str = "fast"  # named network variant (model.network.VARIANTS)
    out: str = "runs/train"  # checkpoint and log folder
    steps: int = 30000  # optimiser steps in total
    batch: int = 16  # patches per step
    patch: int = 32  # LR patch size (HR patch = scale * patch)
    loss: str = "l1"  # l1 (robust, sharp), l2 (what PSNR measures) or l1-luma (for JPEG inputs; see luma_l1_loss)
    chroma_weight: float = 0.25  # l1-luma only: weight of the RGB term beside the luma term
    lr: float = 1e-3  # peak Adam learning rate
    lr_min: float = 1e-5  # learning rate at the end of the cosine decay
    warmup: int = 500  # linear warm-up steps
    rescales: tuple[float, ...] = (1.0, 0.75, 0.5)  # extra HR copies shrunk by these factors
    val_every: int = 1000  # steps between validations and checkpoints
    seed: int = 0  # seeds torch and the patch sampler
    threads: int = 0  # torch CPU threads; 0 = torch's default
    init: str = ""  # checkpoint or exported .onnx whose body weights start this run (fine-tuning)
    resume: bool = False  # continue from out/last.pt
    jpeg: tuple[int, ...] = ()  # (low, high) JPEG quality range of the training LR images; () = clean LR
    webp: tuple[int, ...] = ()  # (low, high) lossy WebP quality range of the training LR images (not with jpeg)
    jpeg_copies: int = 4  # compressed versions of each LR image (JPEG or WebP)
    holdout: int = 0  # validate on every N-th training image, held out of training (instead of val); 0 = off
    val_crop: int = 0  # centre-crop validation images to at most this many HR pixels per side; 0 = whole
    reparam: bool = False  # train each convolution as a block of parallel branches (model.reparam), folded for export
    rep_expand: int = 2  # with reparam: width of the expand-squeeze branches, in multiples of a block's outputs

    @property
    def codec(self) -> str | None:
        """The lossy format of the training LR images: "jpeg", "webp", or None for clean LR."""
        return "jpeg" if self.jpeg else "webp" if self.webp else None

    @property
    def qualities(self) -> tuple[int, ...]:
        return self.jpeg or self.webp

    @property
    def val_quality(self) -> int | None:
        """The quality validation images are saved at (in the training codec): the middle of the training range."""
        return (self.qualities[0] + self.qualities[1]) // 2 if self.codec else None


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` pixels of ``img`` (all of a side shorter than that; all of it for 0)."""
    if size <= 0:
        return img
    h, w = img.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[y : y + size, x : x + size]


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``lr_min``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * progress))


# The luma that Y-PSNR scores, as weights of R, G, B in [0, 1] (the constant offset drops out of a difference).
_LUMA = torch.tensor(BT601_LUMA).div(255).view(1, 3, 1, 1)


def luma_l1_loss(sr: torch.Tensor, hr: torch.Tensor, chroma_weight: float) -> torch.Tensor:
    """L1 on luma plus ``chroma_weight`` times L1 on RGB.

    For JPEG inputs most of the RGB error is chroma the encoder subsampled and quantised hardest,
    which a network this small cannot restore and Y-PSNR does not score; weighting luma spends
    its capacity on the detail that can be recovered, and the RGB term keeps colour anchored.
    """
    diff = sr - hr
    luma = (diff * _LUMA.to(diff.device)).sum(1)
    return luma.abs().mean() + chroma_weight * diff.abs().mean()


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_RGB_LOSSES: dict[str, Loss] = {"l1": F.l1_loss, "l2": F.mse_loss}
LOSSES = (*_RGB_LOSSES, "l1-luma")


def loss_function(cfg: TrainConfig) -> Loss:
    """The training loss ``cfg`` names, as ``loss(sr, hr)``."""
    if cfg.loss == "l1-luma":
        return partial(luma_l1_loss, chroma_weight=cfg.chroma_weight)
    return _RGB_LOSSES[cfg.loss]


def train_step(
    net: SRNet, opt: torch.optim.Optimizer, lr_batch: torch.Tensor, hr_batch: torch.Tensor, loss: Loss = F.l1_loss
) -> float:
    """One optimiser step; returns the loss before the step."""
    net.train()
    value = loss(net(lr_batch), hr_batch)
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()
    return value.item()


@torch.no_grad()
def validate(
    net: SRNet, images: list[np.ndarray], device: torch.device, quality: int | None = None, codec: str = "jpeg"
) -> float:
    """Mean Y-PSNR (shave = scale) of the network's 8-bit output on HR ``images`` (LR saved as ``codec`` at
    ``quality`` if given)."""
    net.eval()
    s, scores = net.scale, []
    for img in images:
        hr = mod_crop(img, s)
        lr = degrade(hr, s, quality, codec).transpose(2, 0, 1)[None].astype(np.float32) / 255
        x = torch.from_numpy(pad_for_inference(lr, net.context)).to(device)
        sr = net(x)[0].clamp(0, 1).mul(255).round().byte().cpu().numpy().transpose(1, 2, 0)
        scores.append(psnr(rgb_to_y(hr), rgb_to_y(sr), shave=s))
    return float(np.mean(scores))


def describe_run(ckpt: dict) -> str:
    """One line saying what the run that wrote ``ckpt`` did, for the lineage of the runs it starts."""
    tc = ckpt["train_config"]
    lossy = [f"{name} {tc[key][0]}-{tc[key][1]}" for key, name in (("jpeg", "JPEG"), ("webp", "WebP")) if tc.get(key)]
    data = lossy[0] if lossy else "clean LR"
    return f"{Path(tc['out']).name}: {ckpt['step']} steps of {ckpt['variant']}, {loss_label(tc)}, lr {tc['lr']}, {data}"


def loss_label(train_config: dict) -> str:
    """The loss a run's ``train_config`` names, in words."""
    if train_config.get("loss") == "l1-luma":
        return f"L1 on luma + {train_config['chroma_weight']} x L1 on RGB"
    return train_config.get("loss", "l1").upper()


def lineage(ckpt: dict) -> list[str]:
    """The runs (and reshapes) that made the weights in ``ckpt``, oldest first: a run's own line comes last."""
    own = [describe_run(ckpt)] if "train_config" in ckpt else []
    return ckpt.get("lineage", []) + own


def lineage_of(path: str) -> list[str]:
    """``lineage`` of the checkpoint at ``path``; an exported ``.onnx`` is one line that points to its card."""
    if not path:
        return []
    if path.endswith(".onnx"):
        return [f"{Path(path).name} (an exported model; its card says how it was trained)"]
    return lineage(torch.load(path, map_location="cpu", weights_only=False))


def _checkpoint(
    net: SRNet, opt: torch.optim.Optimizer, cfg: TrainConfig, step: int, best: float, lineage: list[str]
) -> dict:
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "machine": machine(),
        "model_config": config_dict(net),
        "reparam": asdict(net.options) if isinstance(net, RepSRNet) else None,  # branch options; folded on load
        "variant": cfg.variant,
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "best_psnr": best,
        "train_config": asdict(cfg),
        "lineage": lineage,  # how the weights this run started from were made, oldest first
    }


def machine() -> str:
    """The CPU this process trains on and the threads torch uses, for the model card."""
    cpu = cpu_model() or platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs; torch on {torch.get_num_threads()} threads"


def load_network(path: str | Path, map_location: str = "cpu") -> tuple[SRNet, dict]:
    """Rebuild the plain network stored in a checkpoint (branches folded); returns ``(net, checkpoint)``.

    An exported ``.onnx`` (``--init`` takes those too) gives its network and a checkpoint that holds only its
    lineage and name."""
    if str(path).endswith(".onnx"):
        config, state = weights_from_onnx(path)
        net = SRNet(**config)
        load_weights(net, state)
        return net, {"lineage": lineage_of(str(path)), "variant": Path(path).stem}
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    net = training_network(ckpt)
    return (net.fold() if isinstance(net, RepSRNet) else net), ckpt


def training_network(ckpt: dict) -> SRNet:
    """The network a checkpoint's run trained, with its weights: a ``RepSRNet`` (branches) or a plain ``SRNet``."""
    options = ckpt.get("reparam")
    net = RepSRNet(**ckpt["model_config"], options=RepOptions(**options)) if options else SRNet(**ckpt["model_config"])
    load_weights(net, ckpt["model"])
    return net


def _init_from(net: SRNet, path: str) -> None:
    """Copy every tensor of the same name and shape from a checkpoint (folded, if it trained branches) or an
    exported ``.onnx`` (the body).

    Per-channel PReLU slopes start a per-layer slope at their mean.
    """
    src = load_network(path)[0].state_dict()  # a --reparam checkpoint's branches folded first
    own = net.state_dict()
    src = {k: v.mean(0, keepdim=True) if v.ndim == 1 and own.get(k, v).shape == (1,) else v for k, v in src.items()}
    shared = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape and not k.startswith("skip")}
    own.update(shared)
    net.load_state_dict(own)
    log.info("initialised %d tensors from %s", len(shared), path)


def train(cfg: TrainConfig) -> float:
    """Run training as configured; returns the best validation PSNR (nan without validation)."""
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    net = build(cfg.variant, cfg.scale)
    step, best, lineage, ckpt = 0, float("-inf"), lineage_of(cfg.init), None
    if cfg.resume and (out / "last.pt").exists():
        ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        net = training_network(ckpt)
        step, best, lineage = ckpt["step"], ckpt["best_psnr"], ckpt.get("lineage", lineage)
        log.info("resumed from %s at step %d", out / "last.pt", step)
    else:
        if cfg.init:
            _init_from(net, cfg.init)
        if cfg.reparam:  # the branches start at the plain network's function
            net = RepSRNet.starting_at(net, RepOptions(expand=cfg.rep_expand))
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
    net.to(device)
    for state in opt.state.values():  # optimizer tensors follow the model to the GPU
        for k, v in state.items():
            if torch.is_tensor(v) and k != "step":
                state[k] = v.to(device)

    train_files, held_out = split_holdout([p for folder in cfg.data for p in list_images(folder)], cfg.holdout)
    val_files = held_out or (list_images(cfg.val) if cfg.val else [])
    images = [load_rgb(p) for p in train_files]
    lossy = LossyDegradation(codec=cfg.codec, qualities=cfg.qualities, copies=cfg.jpeg_copies) if cfg.codec else None
    pairs = make_pairs(images, cfg.scale, net.context, cfg.rescales, lossy=lossy, seed=cfg.seed)
    sampler = PatchSampler(pairs, cfg.scale, net.context, cfg.patch, seed=cfg.seed + step)
    val_images = [centre_crop(load_rgb(p), cfg.val_crop) for p in val_files]
    log.info(
        "%d training images (%d pairs), %d validation images, device %s",
        len(images),
        len(pairs),
        len(val_images),
        device,
    )

    criterion = loss_function(cfg)
    log_path = out / "log.csv"
    new_log = not (cfg.resume and log_path.exists())
    with open(log_path, "w" if new_log else "a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(["step", "loss", "lr", "val_psnr", "seconds"])
        bar = tqdm(total=cfg.steps, initial=step, desc=f"{cfg.variant} x{cfg.scale}", mininterval=10)
        started, running, val_psnr = time.time(), 0.0, float("nan")
        while step < cfg.steps:
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            lr_np, hr_np = sampler.batch(cfg.batch)
            lr_t, hr_t = torch.from_numpy(lr_np).to(device), torch.from_numpy(hr_np).to(device)
            loss = train_step(net, opt, lr_t, hr_t, criterion)
            running = loss if step == 0 else 0.98 * running + 0.02 * loss
            step += 1
            bar.update(1)
            if step % cfg.val_every == 0 or step == cfg.steps:
                if val_images:
                    val_psnr = validate(net, val_images, device, cfg.val_quality, cfg.codec or "jpeg")
                writer.writerow(
                    [
                        step,
                        f"{running:.5f}",
                        f"{opt.param_groups[0]['lr']:.3g}",
                        f"{val_psnr:.3f}",
                        f"{time.time() - started:.0f}",
                    ]
                )
                fh.flush()
                if not val_images or val_psnr > best:
                    best = val_psnr if val_images else best
                    torch.save(_checkpoint(net, opt, cfg, step, best, lineage), out / "best.pt")
                torch.save(_checkpoint(net, opt, cfg, step, best, lineage), out / "last.pt")
            bar.set_postfix(loss=f"{running:.4f}", val_psnr=f"{val_psnr:.2f}", refresh=False)
        bar.close()
    return best if val_images else float("nan")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="training image folders")
    p.add_argument("--val", default=d.val, help="validation image folder (e.g. Set5)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=d.scale)
    p.add_argument("--variant", default=d.variant)
    p.add_argument("--out", default=d.out)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--patch", type=int, default=d.patch)
    p.add_argument("--loss", choices=LOSSES, default=d.loss)
    p.add_argument("--chroma-weight", type=float, default=d.chroma_weight)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-min", type=float, default=d.lr_min)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--rescales", type=float, nargs="+", default=list(d.rescales))
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--init", default=d.init, help="checkpoint or exported .onnx to take body weights from")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    lossy = p.add_mutually_exclusive_group()
    lossy.add_argument("--jpeg", type=int, nargs=2, metavar=("LOW", "HIGH"), help="JPEG quality range of the LR images")
    lossy.add_argument("--webp", type=int, nargs=2, metavar=("LOW", "HIGH"), help="WebP quality range of the LR images")
    p.add_argument("--jpeg-copies", type=int, default=d.jpeg_copies, help="compressed copies of each LR image")
    p.add_argument("--holdout", type=int, default=d.holdout, help="validate on every N-th training image instead")
    p.add_argument("--val-crop", type=int, default=d.val_crop)
    p.add_argument("--reparam", action="store_true", help="train with re-parameterizable blocks (model.reparam)")
    p.add_argument("--rep-expand", type=int, default=d.rep_expand)
    args = vars(p.parse_args(argv))
    args["rescales"] = tuple(args["rescales"])
    args["jpeg"] = tuple(args["jpeg"] or ())
    args["webp"] = tuple(args["webp"] or ())
    return TrainConfig(**args)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    best = train(parse_args(argv))
    log.info("best validation PSNR %.3f dB", best)


if __name__ == "__main__":
    main()
