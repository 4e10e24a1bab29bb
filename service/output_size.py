"""The size a request asks for, and how the service makes it: which model scale runs, and what the result is resampled
to afterwards.

A request asks for a size in one of three ways, as people say it:

- ``scale``: a factor in (1, 4]; 2, 3 and 4 are the models' own and need no resampling;
- ``width`` or ``height`` alone: the other side follows the aspect ratio;
- ``width`` and ``height``, with ``fit``: ``contain`` (default) keeps the aspect ratio and the largest size within
  both; ``cover`` keeps the aspect ratio, fills both and crops the overflow evenly from both sides; ``fill``
  stretches to exactly both.

The model that runs is the smallest of the served scales that reaches the asked size on every side; its result is
then resampled to the exact size (:mod:`service.imageio.resampling`). Every size involved is known from the image's
header, so the limits are checked on all of them before any pixel is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.errors import BadParameter

__all__ = ["SizeRequest", "OutputPlan", "FITS", "MAX_FACTOR"]

FITS = ("contain", "cover", "fill")
MAX_FACTOR = 4.0  # the largest model scale: a bigger size would be invented by the resampler, not the network
_EPSILON = 1e-9  # a factor this close to a model's scale is that scale


@dataclass(frozen=True)
class OutputPlan:
    """How one image becomes the asked size: the model scale, the size the result is resampled to and, for
    ``cover``, the part of the model's output that is kept (left, top, right, bottom, in its pixels)."""

    model_scale: int
    width: int
    height: int
    box: tuple[float, float, float, float]

    def needs_resampling(self, width: int, height: int) -> bool:
        """Whether the model's output for a ``width`` x ``height`` input is not already the result."""
        s = self.model_scale
        return (self.width, self.height) != (width * s, height * s) or self.box != (0, 0, width * s, height * s)


@dataclass(frozen=True, kw_only=True)
class SizeRequest:
    """What the request asked for; :meth:`plan` checks it against an image's size."""

    scale: float | None = None
    width: int | None = None
    height: int | None = None
    fit: Literal["contain", "cover", "fill"] = "contain"

    def __post_init__(self) -> None:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise BadParameter("ask for scale or for width/height, not both")
        if self.scale is not None and not 1 < self.scale <= MAX_FACTOR:
            raise BadParameter(f"scale must be above 1 and at most {MAX_FACTOR:g}, not {self.scale:g}")
        if self.fit not in FITS:
            raise BadParameter(f"fit must be one of {', '.join(FITS)}")

    @property
    def integer_scale(self) -> int | None:
        """The model scale when the request names one of 2, 3, 4 (or nothing: 2), so that no image size is needed."""
        if self.width is None and self.height is None:
            scale = 2.0 if self.scale is None else self.scale
            if scale == int(scale):
                return int(scale)
        return None

    def plan(self, width: int, height: int, scales: tuple[int, ...]) -> OutputPlan:
        """The plan for a ``width`` x ``height`` image with models at ``scales``; BadParameter if the asked size
        is not larger than the image, or needs more than the largest scale."""
        fx, fy, out_w, out_h = self._factors(width, height)
        need = max(fx, fy)
        if min(fx, fy) <= 1 + _EPSILON and self.fit != "fill" or need <= 1 + _EPSILON:
            raise BadParameter(
                f"{out_w}x{out_h} is not larger than the image ({width}x{height}); this service only upscales"
            )
        usable = [s for s in sorted(scales) if s >= need - _EPSILON]
        if not usable:
            raise BadParameter(
                f"{out_w}x{out_h} is x{need:.3g} of the image ({width}x{height}); the most this server makes is "
                f"x{max(scales)}"
            )
        s = usable[0]
        box: tuple[float, float, float, float] = (0, 0, width * s, height * s)
        if self.fit == "cover" and self.width is not None and self.height is not None:
            # The scaled image covers both sides; keep its middle, in the model output's pixels.
            f = max(fx, fy)
            keep_w, keep_h = self.width / f * s, self.height / f * s
            left, top = (width * s - keep_w) / 2, (height * s - keep_h) / 2
            box = (left, top, left + keep_w, top + keep_h)
        return OutputPlan(model_scale=s, width=out_w, height=out_h, box=box)

    def _factors(self, width: int, height: int) -> tuple[float, float, int, int]:
        """The factor on each side and the final size."""
        w, h = self.width, self.height
        if w is None and h is None:
            scale = 2.0 if self.scale is None else self.scale
            out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
            return scale, scale, out_w, out_h
        if h is None:
            out_h = max(1, round(height * w / width))
            return w / width, w / width, w, out_h
        if w is None:
            out_w = max(1, round(width * h / height))
            return h / height, h / height, out_w, h
        fx, fy = w / width, h / height
        if self.fit == "contain":
            f = min(fx, fy)
            return f, f, min(w, max(1, round(width * f))), min(h, max(1, round(height * f)))
        if self.fit == "cover":
            f = max(fx, fy)
            return f, f, w, h
        return fx, fy, w, h
