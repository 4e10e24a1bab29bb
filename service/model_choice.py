"""Which model runs a request: the one it names, or for ``model=auto`` the one made for its input.

A model whose card has a ``jpeg_quality`` band is the best one measured for JPEG inputs of those qualities, and one
with a ``webp_quality`` band for lossy WebP inputs of those (``model.codec_bands`` measures both on images held out
of training). ``auto`` reads how compressed the input is (``service.imageio.jpeg_quality`` from a JPEG's
quantisation tables, ``service.imageio.webp_quality`` from a WebP's VP8 frame header) and runs the model whose band
holds it; the clean model (``UPSCALER_CLEAN_MODEL``, ``fast`` by default) runs everything else: lossless inputs
(PNG, BMP, TIFF, GIF, lossless WebP, 16-bit), HEIF and AVIF (their quantisers are not read), and lossy inputs of a
quality no band covers (the bands end where the clean model is the better one).

The clean model names a tier, and auto stays in it: the models for compressed inputs are those named
``<clean model>-...`` (``quality-jpeg-q75`` for ``quality``), their bands measured against that clean model. A tier
with no such models at a scale for a codec (``turbo``; ``quality`` at x3, or for WebP) borrows those of ``fast``, the
default, with the bands measured against ``fast``, rather than sending compressed inputs to a model made for clean
ones. A model folder of one's own must name its models for compressed inputs that way for auto to run them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.errors import BadParameter
from service.imageio.decoding import Compression
from service.model_files import ModelKey, ModelSpec

__all__ = ["AUTO", "ModelChoice", "auto_bands", "bands", "check_requested", "choose_model", "scales_of", "tier_bands"]

AUTO = "auto"
BORROWED_TIER = "fast"  # whose models for compressed inputs a tier without its own uses


@dataclass(frozen=True)
class ModelChoice:
    key: ModelKey
    reason: str  # why this model, for the response's X-Model-Reason header and the access log


def bands(specs: Mapping[ModelKey, ModelSpec], scale: int, field: str) -> list[tuple[int, int, ModelKey]]:
    """``(low, high, model)`` for the models at ``scale`` whose card has a band ``field`` (``jpeg_quality``,
    ``webp_quality``), lowest band first."""
    return sorted(
        (*spec.card[field], key) for key, spec in specs.items() if key.scale == scale and spec.card.get(field)
    )


def tier_bands(
    specs: Mapping[ModelKey, ModelSpec], scale: int, field: str, clean: str
) -> list[tuple[int, int, ModelKey]]:
    """The bands auto uses when ``clean`` is the clean model: its own tier's (models named ``<clean>-...``), else
    ``BORROWED_TIER``'s."""
    found = bands(specs, scale, field)
    for tier in (clean, BORROWED_TIER):
        own = [band for band in found if band[2].variant.startswith(f"{tier}-")]
        if own:
            return own
    return []


def auto_bands(specs: Mapping[ModelKey, ModelSpec], field: str, clean: str) -> dict[ModelKey, list[int]]:
    """``{model: [low, high]}`` of ``field`` at every scale: the qualities auto runs each model for under the clean
    model ``clean`` (a model with no band, or another tier's, is absent)."""
    scales = {key.scale for key in specs}
    return {key: [low, high] for scale in scales for low, high, key in tier_bands(specs, scale, field, clean)}


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
    specs: Mapping[ModelKey, ModelSpec], requested: str, scale: int, clean: str, compression: Compression | None
) -> ModelChoice:
    """The model for a decoded input (see the module docstring); ``requested`` was checked by ``check_requested``."""
    if requested != AUTO:
        return ModelChoice(ModelKey(requested, scale), "named in the request")
    if compression is None:
        return ModelChoice(ModelKey(clean, scale), "auto: not a lossy JPEG or WebP")
    for low, high, key in tier_bands(specs, scale, compression.band, clean):
        if low <= compression.quality <= high:
            return ModelChoice(key, f"auto: {compression.describe()}")
    return ModelChoice(ModelKey(clean, scale), f"auto: {compression.describe()}, in no band")
