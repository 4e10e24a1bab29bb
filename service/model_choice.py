"""Which model runs a request: the one it names, or for ``model=auto`` the one made for its input.

A model whose card has a ``jpeg_quality`` band was trained for JPEG-compressed inputs; ``auto`` runs it for a JPEG
whose estimated quality (``service.imageio.jpeg_quality``, from the file's quantisation tables) lies in the band,
and the clean model (``UPSCALER_CLEAN_MODEL``, ``fast`` by default) for everything else: lossless inputs (PNG, BMP,
TIFF, GIF, 16-bit), JPEGs of a quality no band covers (the bands end where the clean model is the better one), and
WebP. A lossy WebP's quality is not read (its quantiser sits in the VP8 frame header, which Pillow does not expose),
and without it the clean model is the safe choice: it is the best at high WebP qualities, while at WebP 75 and
below a JPEG model would gain more (docs/model.md); a client that knows its WebPs are strongly compressed can name
one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.errors import BadParameter
from service.imageio.jpeg_quality import JpegQuality
from service.model_files import ModelKey, ModelSpec

__all__ = ["AUTO", "ModelChoice", "check_requested", "choose_model", "jpeg_bands", "scales_of"]

AUTO = "auto"


@dataclass(frozen=True)
class ModelChoice:
    key: ModelKey
    reason: str  # why this model, for the response's X-Model-Reason header and the access log


def jpeg_bands(specs: Mapping[ModelKey, ModelSpec], scale: int) -> list[tuple[int, int, ModelKey]]:
    """``(low, high, model)`` for the models at ``scale`` made for JPEG inputs, lowest band first."""
    bands = [
        (*spec.card["jpeg_quality"], key)
        for key, spec in specs.items()
        if key.scale == scale and spec.card.get("jpeg_quality")
    ]
    return sorted(bands)


def check_requested(specs: Mapping[ModelKey, ModelSpec], requested: str, scale: int | None, clean: str) -> None:
    """Raise BadParameter (400) before the body is read if the request names a model this server cannot run: at
    ``scale``, or at any scale where the scale depends on the image's size (None)."""
    scales = scales_of(specs, requested, clean)
    if not scales or (scale and scale not in scales):
        variant = clean if requested == AUTO else requested
        served = ", ".join(f"{v} x{s}" for v, s in sorted(specs))
        what = f"auto needs the clean model {clean!r}" if requested == AUTO else f"no model {variant!r}"
        raise BadParameter(f"{what}{f' for scale {scale}' if scale else ''}; this server has: {served}")


def scales_of(specs: Mapping[ModelKey, ModelSpec], requested: str, clean: str) -> tuple[int, ...]:
    """The scales the requested model runs at (for auto, the clean model's: every JPEG band falls back to it)."""
    variant = clean if requested == AUTO else requested
    return tuple(sorted(key.scale for key in specs if key.variant == variant))


def choose_model(
    specs: Mapping[ModelKey, ModelSpec], requested: str, scale: int, clean: str, jpeg: JpegQuality | None
) -> ModelChoice:
    """The model for a decoded input (see the module docstring); ``requested`` was checked by ``check_requested``."""
    if requested != AUTO:
        return ModelChoice(ModelKey(requested, scale), "named in the request")
    if jpeg is not None:
        how = "" if jpeg.exact else " (tables not libjpeg's; nearest quality)"
        for low, high, key in jpeg_bands(specs, scale):
            if low <= jpeg.quality <= high:
                return ModelChoice(key, f"auto: JPEG quality {jpeg.quality}{how}")
        return ModelChoice(ModelKey(clean, scale), f"auto: JPEG quality {jpeg.quality}{how}, in no JPEG band")
    return ModelChoice(ModelKey(clean, scale), "auto: not a JPEG")
