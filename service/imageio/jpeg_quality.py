"""How compressed a JPEG is, read from its quantisation tables.

libjpeg (and so Pillow, most cameras' and phones' encoders, GIMP, ImageMagick) makes its tables by scaling the two
example tables of the JPEG standard (Annex K) by the IJG quality q: a factor of 5000 / q % below 50, 200 - 2q %
from 50 up, each entry rounded and kept within 1..255. :func:`estimate_quality` inverts that: where a file's
tables are exactly the scaled tables of some q, that q is the answer (``exact``). Other encoders (Photoshop, some
cameras) write tables of their own; for those the answer is the IJG quality whose luminance table quantises as
coarsely on average (the geometric mean of the entries' ratios), the quality libjpeg would need to lose as much.
Only the luminance table (the first) decides; the chrominance table is compared for ``exact``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

__all__ = ["JpegQuality", "estimate_quality", "ijg_tables"]

# The example tables of ITU-T T.81 Annex K (K.1 luminance, K.2 chrominance), in natural (row-major) order, as
# Pillow's ``Image.quantization`` gives them.
_LUMA = np.array(
    [
        *(16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55),
        *(14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62),
        *(18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92),
        *(49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99),
    ],
    np.float64,
)
_CHROMA = np.array(
    [*(17, 18, 24, 47), *[99] * 4, *(18, 21, 26, 66), *[99] * 4, *(24, 26, 56), *[99] * 5, *(47, 66), *[99] * 38],
    np.float64,
)


@dataclass(frozen=True)
class JpegQuality:
    quality: int  # IJG quality 1..100 (the estimate where not exact)
    exact: bool  # the tables are exactly libjpeg's for that quality

    band: ClassVar[str] = "jpeg_quality"  # the model card's field with the qualities a model is made for

    def describe(self) -> str:
        return f"JPEG quality {self.quality}" + ("" if self.exact else " (tables not libjpeg's; nearest quality)")


def _scale_factor(quality: int) -> int:
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def ijg_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """libjpeg's (luminance, chrominance) tables for ``quality``, natural order, baseline (entries 1..255)."""
    s = _scale_factor(quality)
    return tuple(np.clip((base * s + 50) // 100, 1, 255) for base in (_LUMA, _CHROMA))


_ALL = {q: ijg_tables(q) for q in range(1, 101)}
# log of each quality's mean quantiser step relative to the example table: decreasing in q
_LOG_SCALE = np.array([np.mean(np.log(_ALL[q][0] / _LUMA)) for q in range(1, 101)])


def estimate_quality(tables: dict[int, list[int]]) -> JpegQuality | None:
    """The IJG quality of a JPEG's quantisation tables (``Image.quantization``: table id -> 64 entries in natural
    order), or None where there is no luminance table of 64 entries."""
    luma = np.asarray(tables.get(0, ()), np.float64)
    if luma.shape != (64,) or luma.min() < 1:
        return None
    chroma = np.asarray(tables[1], np.float64) if len(tables.get(1, ())) == 64 else None
    for q, (ijg_luma, ijg_chroma) in _ALL.items():
        if np.array_equal(luma, ijg_luma) and (chroma is None or np.array_equal(chroma, ijg_chroma)):
            return JpegQuality(q, exact=True)
    level = np.mean(np.log(luma / _LUMA))
    return JpegQuality(int(np.argmin(np.abs(_LOG_SCALE - level))) + 1, exact=False)
