"""FSRCNN-style super-resolution network with a transposed-convolution upsampler.

The network works on an LR image that has already been padded by ``context``
pixels on every side (``SRNet.context``) and uses only 'valid' convolutions,
so every output pixel depends on real input pixels alone:

    (N, 3, H + 2c, W + 2c) -> (N, 3, sH, sW)

That contract is what makes tiled inference exact: a tile cut with ``c``
pixels of context gives the same pixels as the whole image would. Training
uses it too (loss only on pixels the network can see), and the exported ONNX
model keeps it; ``model.pad_for_inference`` pads a whole image for it.

Checkerboard artifacts, the known weakness of transposed convolutions, are
avoided three ways:
  * the learned ``ConvTranspose2d`` has a kernel that is a multiple of the
    stride (2s for even s, 3s for odd s), so every output pixel receives the
    same number of kernel taps;
  * it is initialised as bilinear interpolation of its input features;
  * a global skip adds a fixed bicubic upsampling (``BicubicUpsample``), so the
    learned path only predicts the residual detail, which is zero on flat and
    linear regions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["SRNetConfig", "SRNet", "BicubicUpsample", "VARIANTS", "build", "load_weights", "pad_for_inference"]


@dataclass(frozen=True)
class SRNetConfig:
    scale: int = 2  # upscaling factor: 2, 3 or 4
    d: int = 56  # feature channels (FSRCNN's d)
    s: int = 12  # shrunk channels in the mapping layers (FSRCNN's s)
    m: int = 4  # number of 3x3 mapping layers (FSRCNN's m)
    channels: int = 3  # RGB in, RGB out
    channel_slopes: bool = True  # a PReLU slope per channel (FSRCNN); False: one per layer, fused by ONNX Runtime


# Named variants; the fast one is FSRCNN(56, 12, 4) on RGB. Turbo is the same network with one
# PReLU slope per layer, which ONNX Runtime fuses into the convolutions (about 2x faster on CPU).
# Deep trades 8 feature channels for a fifth mapping layer at fast's cost (within 1% of its
# multiply-adds): each output pixel sees 15 LR pixels across instead of 13, which helps on JPEG
# inputs, whose artefacts are 8x8 blocks; model.reshape starts it from a trained fast.
# Quality doubles the mapping layers' channels to 24: 2.2x fast's multiply-adds at x2 (where the upsampler is
# cheapest), 1.7x at x3 and x4; 24 is two of the kernels' 12-channel blocks on AVX-512 and four 6-channel ones on
# AVX2, as 12 is one and two. model.reshape starts it from a trained fast, its new channels unread.
VARIANTS: dict[str, dict[str, int | bool]] = {
    "fast": dict(d=56, s=12, m=4),
    "turbo": dict(d=56, s=12, m=4, channel_slopes=False),
    "quality": dict(d=56, s=24, m=4),
    "deep": dict(d=48, s=12, m=5),
}


def _deconv_kernel(scale: int) -> int:
    return 2 * scale if scale % 2 == 0 else 3 * scale


def _bilinear_kernel(size: int, scale: int) -> torch.Tensor:
    """1-D-separable bilinear weights of a transposed conv, normalised so a flat input stays flat."""
    centre = (size - 1) / 2
    ax = 1 - torch.abs(torch.arange(size, dtype=torch.float64) - centre) / scale
    ax = ax.clamp(min=0)
    k2 = torch.outer(ax, ax)
    return k2 / k2.sum() * scale * scale


def _bicubic_taps(scale: int) -> torch.Tensor:
    """1-D weights of bicubic (a = -0.5) x``scale`` upsampling as a 5s-tap transposed convolution.

    LR pixel i has its centre at HR coordinate (i + 0.5) * s - 0.5, so it
    reaches HR pixels o with o - i*s in (-1.5s - 0.5, 2.5s - 0.5); tap j is HR
    offset j - 2s, which covers that range for every s.
    """
    offsets = torch.arange(-2 * scale, 3 * scale, dtype=torch.float64)
    x = ((offsets + 0.5) / scale - 0.5).abs()  # HR offset -> LR distance from pixel centre
    return torch.where(
        x <= 1,
        1.5 * x**3 - 2.5 * x**2 + 1,
        torch.where(x < 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, torch.zeros_like(x)),
    )


class BicubicUpsample(nn.Module):
    """Fixed bicubic x``scale`` upsampling of the unpadded centre: (N, C, H + 2c, W + 2c) -> (N, C, sH, sW).

    Mathematically the depthwise transposed convolution with the 5s-tap bicubic
    kernel, computed in its polyphase form: output pixel (sq + r) of that
    transposed convolution is a 5-tap correlation of LR pixels q - 2 .. q + 2
    with taps s(4 - u) + r. So a grouped 5x5 convolution makes the s*s phases
    as channels and a pixel shuffle interleaves them. That costs the same
    multiply-adds without a transposed convolution's column buffer and scatter;
    in ONNX Runtime it made the whole fast x2 network about 10% faster.
    """

    def __init__(self, scale: int, channels: int, context: int):
        super().__init__()
        self.crop = context - 2  # the 5x5 window needs 2 LR pixels of context on each side
        taps = _bicubic_taps(scale)
        phase = torch.stack([taps[scale * (4 - torch.arange(5)) + r] for r in range(scale)])  # (s, 5)
        kernel = torch.einsum("au,bv->abuv", phase, phase).reshape(scale * scale, 1, 5, 5)
        self.phases = nn.Conv2d(channels, channels * scale * scale, 5, groups=channels, bias=False)
        self.phases.weight.data.copy_(kernel.repeat(channels, 1, 1, 1).float())
        self.phases.weight.requires_grad_(False)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.crop
        x = x[:, :, k : x.shape[2] - k, k : x.shape[3] - k]  # (N, C, H + 4, W + 4)
        return self.shuffle(self.phases(x))  # (N, C*s*s, H, W) -> (N, C, sH, sW)


class SRNet(nn.Module):
    """FSRCNN: extract -> shrink -> map -> expand -> ConvTranspose2d, plus a bicubic skip."""

    def __init__(
        self, scale: int = 2, d: int = 56, s: int = 12, m: int = 4, channels: int = 3, channel_slopes: bool = True
    ):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
        self.config = SRNetConfig(scale=scale, d=d, s=s, m=m, channels=channels, channel_slopes=channel_slopes)
        self.scale = scale

        # One slope per layer exports as LeakyRelu, which ONNX Runtime fuses into the convolution
        # (per-channel PRelu it runs as a separate pass over memory).
        def act(n: int) -> nn.PReLU:
            return nn.PReLU(n if channel_slopes else 1)

        layers: list[nn.Module] = [nn.Conv2d(channels, d, 5), act(d)]  # extract
        layers += [nn.Conv2d(d, s, 1), act(s)]  # shrink
        for _ in range(m):  # non-linear mapping
            layers += [nn.Conv2d(s, s, 3), act(s)]
        layers += [nn.Conv2d(s, d, 1), act(d)]  # expand
        self.body = nn.Sequential(*layers)
        # Valid convs shrink the map by body_margin per side; one LR pixel of margin is left
        # for the transposed conv, whose padding then crops the output back to exactly sH x sW.
        self.body_margin = 2 + m
        self.context = self.body_margin + 1

        k = _deconv_kernel(scale)
        # out = (in - 1) * s - 2p + k with in = H + 2 and the kernel centred on the LR pixel.
        self.upsample = nn.ConvTranspose2d(d, channels, k, stride=scale, padding=scale + (k - scale) // 2)
        self.skip = BicubicUpsample(scale, channels, self.context)
        self._init_weights()

    def _init_weights(self) -> None:
        for mod in self.body:
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, a=0.25, nonlinearity="leaky_relu")
                nn.init.zeros_(mod.bias)
        with torch.no_grad():
            # Start the learned path as a small bilinear upsampling of the features.
            k = self.upsample.kernel_size[0]
            bil = _bilinear_kernel(k, self.scale).float()
            self.upsample.weight.normal_(0, 1e-3).add_(bil * 1e-3)
            nn.init.zeros_(self.upsample.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C, H + 2c, W + 2c) in [0, 1]
        feats = self.body(x)  # (N, d, H + 2, W + 2)
        residual = self.upsample(feats)  # (N, C, sH, sW)
        base = self.skip(x)  # (N, C, sH, sW): bicubic of the unpadded centre
        return base + residual


def build(variant: str, scale: int) -> SRNet:
    """Build a named variant (``fast``, ``turbo`` or ``quality``; see ``VARIANTS``) for ``scale``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return SRNet(scale=scale, **VARIANTS[variant])


def load_weights(net: SRNet, state: dict[str, torch.Tensor]) -> None:
    """Load trained weights (strictly). The fixed bicubic skip is rebuilt by the constructor, never
    loaded, so checkpoints from before its polyphase form (a ``skip.weight`` transposed conv) still load."""
    own_skip = {k: v for k, v in net.state_dict().items() if k.startswith("skip.")}
    net.load_state_dict({**{k: v for k, v in state.items() if not k.startswith("skip.")}, **own_skip})


def config_dict(net: SRNet) -> dict[str, int]:
    """Constructor arguments of ``net``, as stored in checkpoints."""
    return asdict(net.config)


def pad_for_inference(img: np.ndarray, context: int) -> np.ndarray:
    """Pad an (..., H, W) array by ``context`` pixels per side with symmetric mirroring."""
    pad = [(0, 0)] * (img.ndim - 2) + [(context, context), (context, context)]
    return np.pad(img, pad, mode="symmetric")


def macs_per_input_pixel(net: SRNet) -> int:
    """Multiply-adds per LR input pixel (convolutions and transposed convolutions)."""
    total = 0
    for mod in net.modules():
        if isinstance(mod, nn.ConvTranspose2d):
            kh, kw = mod.kernel_size
            total += mod.in_channels * mod.out_channels // mod.groups * kh * kw
        elif isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += mod.in_channels * mod.out_channels // mod.groups * kh * kw
    return total
