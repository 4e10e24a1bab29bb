"""Training-time re-parameterization: blocks that train as parallel linear branches and fold into one convolution.

A convolution's output is linear in its kernel, so a sum of linear branches applied to the same input is one
convolution whose kernel is the sum of the branches' kernels (ECBSR's edge-oriented block, RepVGG, SESR's
collapsible blocks). Training with the branches changes the optimisation, not the function class: the network
that ships is the plain ``model.network.SRNet`` with today's operators.

* ``RepConv2d`` (a valid k x k convolution) trains as
    - the k x k convolution itself;
    - a 1x1 convolution to ``expand`` x cout channels followed by a k x k one (the expand-squeeze branch);
    - for k >= 3, three edge branches: a 1x1 convolution followed by a fixed Sobel-x, Sobel-y or Laplacian
      filter with a learned scale and bias per output channel;
    - the identity, when cin == cout.
* ``RepConvTranspose2d`` (the upsampler) trains as the transposed convolution plus a 1x1 convolution (no bias)
  followed by a transposed convolution of the same kernel and stride; a 1x1 map followed by a transposed
  convolution is one transposed convolution, and parallel ones with the same stride sum.

Each block's ``forward`` runs the one convolution whose weights ``folded()`` computes from the branches, which
is exact, has the same gradients and costs little more than a plain step; ``branches(x)`` runs the branches one
by one, which is the definition the folding is tested against. ``RepSRNet`` is an ``SRNet`` whose convolutions
are such blocks, each starting at the plain convolution it replaces (``starting_at``), so a trained plain model
can be fine-tuned with branches; ``RepSRNet.fold()`` returns the plain ``SRNet`` that is exported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.network import SRNet

__all__ = ["RepOptions", "RepConv2d", "RepConvTranspose2d", "RepSRNet"]


@dataclass(frozen=True)
class RepOptions:
    expand: int = 2  # channels of the expand-squeeze branches, as a multiple of the block's output channels
    edges: bool = True  # Sobel-x, Sobel-y and Laplacian branches in the k x k (k >= 3) blocks


_EDGE_MASKS = torch.tensor(
    [
        [[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],  # Sobel x
        [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]],  # Sobel y
        [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],  # Laplacian
    ]
)


class RepConv2d(nn.Module):
    """A valid ``k`` x ``k`` convolution (cin -> cout, with bias) trained as parallel branches; see the module doc."""

    def __init__(self, cin: int, cout: int, k: int, options: RepOptions = RepOptions()):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, k
        self.main = nn.Conv2d(cin, cout, k)
        mid = options.expand * cout
        self.squeeze_in = nn.Conv2d(cin, mid, 1)
        self.squeeze_out = nn.Conv2d(mid, cout, k)
        n_edges = len(_EDGE_MASKS) if options.edges and k >= 3 else 0
        masks = F.pad(_EDGE_MASKS[:n_edges], [(k - 3) // 2] * 4) if n_edges else torch.zeros(0, k, k)
        self.register_buffer("edge_masks", masks)  # (E, k, k): each 3x3 filter centred in k x k
        self.edge_in = nn.Parameter(torch.randn(n_edges, cout, cin) * (1 / cin) ** 0.5)
        self.edge_in_bias = nn.Parameter(torch.zeros(n_edges, cout))
        self.edge_scale = nn.Parameter(torch.randn(n_edges, cout) * 1e-3)
        self.edge_bias = nn.Parameter(torch.zeros(n_edges, cout))
        identity = torch.zeros(cout, cin, k, k)
        if cin == cout:
            identity[range(cout), range(cin), k // 2, k // 2] = 1
        self.register_buffer("identity", identity)
        for conv in (self.squeeze_in, self.squeeze_out):
            nn.init.normal_(conv.weight, 0, 1e-3 if conv is self.squeeze_out else (1 / cin) ** 0.5)
            nn.init.zeros_(conv.bias)

    @classmethod
    def starting_at(cls, conv: nn.Conv2d, options: RepOptions = RepOptions()) -> RepConv2d:
        """A block whose folded convolution equals ``conv`` (a valid, ungrouped, square convolution)."""
        block = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], options)
        block.set_folded(conv.weight.detach(), conv.bias.detach())
        return block

    @torch.no_grad()
    def set_folded(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the main branch so that the folded convolution is (``weight``, ``bias``); other branches stay."""
        w, b = self._others()
        self.main.weight.copy_(weight - w)
        self.main.bias.copy_(bias - b)

    def _others(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Folded kernel and bias of every branch but the main one."""
        w_in = self.squeeze_in.weight[:, :, 0, 0]  # (mid, cin)
        weight = torch.einsum("omuv,mi->oiuv", self.squeeze_out.weight, w_in)
        bias = self.squeeze_out.bias + torch.einsum("omuv,m->o", self.squeeze_out.weight, self.squeeze_in.bias)
        # Edge e: out[o] = scale[o] * (mask (*) (W_in[o] . x + b_in[o])) + bias[o]; a mask's taps sum to 0 or not.
        weight = weight + torch.einsum("eo,euv,eoi->oiuv", self.edge_scale, self.edge_masks, self.edge_in)
        mask_sums = self.edge_masks.sum((1, 2))  # (E,)
        bias = bias + (self.edge_bias + self.edge_scale * self.edge_in_bias * mask_sums[:, None]).sum(0)
        return weight + self.identity, bias

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The one convolution's (weight (cout, cin, k, k), bias (cout,)) that all branches sum to."""
        w, b = self._others()
        return self.main.weight + w, self.main.bias + b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        return F.conv2d(x, weight, bias)  # (N, cin, H, W) -> (N, cout, H - k + 1, W - k + 1)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """The same function computed branch by branch (the definition ``folded`` is checked against)."""
        y = self.main(x) + self.squeeze_out(self.squeeze_in(x))
        for e in range(self.edge_masks.shape[0]):
            t = F.conv2d(x, self.edge_in[e][:, :, None, None], self.edge_in_bias[e])  # (N, cout, H, W)
            mask = self.edge_masks[e].expand(self.cout, 1, self.k, self.k)
            y = y + F.conv2d(t, mask, groups=self.cout) * self.edge_scale[e].view(1, -1, 1, 1)
            y = y + self.edge_bias[e].view(1, -1, 1, 1)
        if self.cin == self.cout:
            c = self.k // 2
            y = y + x[:, :, c : x.shape[2] - c, c : x.shape[3] - c]
        return y


class RepConvTranspose2d(nn.Module):
    """A transposed convolution trained as itself plus (1x1 conv, no bias) -> transposed conv; see the module doc."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int, options: RepOptions = RepOptions()):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.main = nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=padding)
        mid = options.expand * cin
        # No bias before the transposed convolution: a constant would reach each output phase through a different
        # subset of the taps, which no single bias per channel can fold.
        self.squeeze_in = nn.Conv2d(cin, mid, 1, bias=False)
        self.squeeze_out = nn.ConvTranspose2d(mid, cout, k, stride=stride, padding=padding, bias=False)
        nn.init.normal_(self.squeeze_in.weight, 0, (1 / cin) ** 0.5)
        nn.init.normal_(self.squeeze_out.weight, 0, 1e-4)

    @classmethod
    def starting_at(cls, deconv: nn.ConvTranspose2d, options: RepOptions = RepOptions()) -> RepConvTranspose2d:
        """A block whose folded transposed convolution equals ``deconv``."""
        block = cls(
            deconv.in_channels,
            deconv.out_channels,
            deconv.kernel_size[0],
            deconv.stride[0],
            deconv.padding[0],
            options,
        )
        block.set_folded(deconv.weight.detach(), deconv.bias.detach())
        return block

    @torch.no_grad()
    def set_folded(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set the main branch so that the folded transposed convolution is (``weight``, ``bias``)."""
        self.main.weight.copy_(weight - self._squeeze())
        self.main.bias.copy_(bias)

    def _squeeze(self) -> torch.Tensor:
        # ConvTranspose2d weights are (cin, cout, k, k): the 1x1 map (mid, cin) is applied to the input side.
        return torch.einsum("mi,mouv->iouv", self.squeeze_in.weight[:, :, 0, 0], self.squeeze_out.weight)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The one transposed convolution's (weight (cin, cout, k, k), bias (cout,))."""
        return self.main.weight + self._squeeze(), self.main.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        return F.conv_transpose2d(x, weight, bias, stride=self.stride, padding=self.padding)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """The same function computed branch by branch."""
        return self.main(x) + self.squeeze_out(self.squeeze_in(x))


class RepSRNet(SRNet):
    """``SRNet`` whose every convolution trains as a re-parameterizable block; ``fold()`` gives the plain network.

    Built with the same arguments as ``SRNet`` (plus ``RepOptions``), each block starts at the plain network's
    initial convolution; ``starting_at(net)`` starts one at a trained plain network instead.
    """

    def __init__(self, *args, options: RepOptions = RepOptions(), **kwargs):
        super().__init__(*args, **kwargs)
        self.options = options
        for i, mod in enumerate(self.body):
            if isinstance(mod, nn.Conv2d):
                self.body[i] = RepConv2d.starting_at(mod, options)
        self.upsample = RepConvTranspose2d.starting_at(self.upsample, options)

    @classmethod
    def starting_at(cls, net: SRNet, options: RepOptions = RepOptions()) -> RepSRNet:
        """A RepSRNet whose folded network computes exactly what ``net`` does."""
        rep = cls(**asdict(net.config), options=options)
        with torch.no_grad():
            for i, mod in enumerate(net.body):
                if isinstance(mod, nn.Conv2d):
                    rep.body[i].set_folded(mod.weight, mod.bias)
                elif isinstance(mod, nn.PReLU):
                    rep.body[i].weight.copy_(mod.weight)
            rep.upsample = RepConvTranspose2d.starting_at(net.upsample, options)
        return rep

    def branchwise(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` with every block computed branch by branch (the definition ``fold`` is checked against)."""
        feats = x
        for mod in self.body:
            feats = mod.branches(feats) if isinstance(mod, RepConv2d) else mod(feats)
        return self.skip(x) + self.upsample.branches(feats)

    @torch.no_grad()
    def fold(self) -> SRNet:
        """The plain ``SRNet`` (same config) that computes what this network computes."""
        plain = SRNet(**asdict(self.config)).to(self.upsample.main.weight)  # same dtype and device
        for mine, theirs in zip(self.body, plain.body, strict=True):
            if isinstance(mine, RepConv2d):
                weight, bias = mine.folded()
                theirs.weight.copy_(weight)
                theirs.bias.copy_(bias)
            elif isinstance(mine, nn.PReLU):
                theirs.weight.copy_(mine.weight)
        weight, bias = self.upsample.folded()
        plain.upsample.weight.copy_(weight)
        plain.upsample.bias.copy_(bias)
        return plain
