"""The service's own CPU kernels for the FSRCNN family (``csrc/fsrcnn.c``, declared in ``csrc/fsrcnn.h``).

ONNX Runtime's CPU convolutions run a PReLU with a slope per channel as extra
passes over memory, and compute 12-channel layers as 16-channel ones. The
kernels fuse bias and PReLU into each convolution and vectorise along image
rows instead, so no channel is padded (``bench/results/engine*.json`` compares
them with ONNX Runtime and OpenVINO on the same tiles).

One C source is compiled for two instruction sets, AVX-512F and AVX2 + FMA;
:func:`instruction_sets` says which this CPU runs, and a :class:`NativeNetwork`
packs its weights for one of them (the best, unless told otherwise). A model
runs here when its kernel weights, ``<stem>_native.npz`` (``export.kernel_weights``), were written
from its model file, the library was built (``pip install`` builds it from
setup.py) and the CPU has one of the two; otherwise the engine keeps ONNX
Runtime. cffi releases the GIL for each call, so concurrent runs use the cores;
a whole tile is one call (``fsrcnn_forward``), so the GIL is taken back once a
tile. Single layers run through ``_Conv``, which the tests use to check every
kernel.
"""

from __future__ import annotations

import threading
from functools import cache, partial
from pathlib import Path

import numpy as np

from service.compiled import Library, load_library

__all__ = [
    "ISA_NAMES",
    "NativeNetwork",
    "instruction_sets",
    "kernels_unavailable",
    "planes_from_pixels",
]

ISA_NAMES = ("avx512", "avx2")  # the instruction sets fsrcnn.c is compiled for, best first (FSRCNN_<NAME>)
# Rows each layer computes at a time in fsrcnn_forward's pipeline, per instruction set: with 8 (AVX-512) or 4 (AVX2)
# rows of a 56-channel map of a 128-px tile in flight (128-256 KB), the wide maps stay in a core's L2.
# `python -m bench.layers --bands` times the choices (docs/performance.md, "Per layer").
BAND_ROWS = {"avx512": 8, "avx2": 4}


@cache
def _library() -> tuple[Library | None, str | None]:
    library, why_not = load_library(Path(__file__).parent, "fsrcnn")
    if library is not None and not _supported(library):
        return None, "this CPU has neither AVX2 + FMA nor AVX-512 (or is not x86-64)"
    return library, why_not


def _supported(library: Library) -> list[str]:
    return [name for name in ISA_NAMES if library.lib.fsrcnn_isa_supported(_isa_code(library, name))]


def _isa_code(library: Library, name: str) -> int:
    return getattr(library.lib, f"FSRCNN_{name.upper()}")


def _kernels() -> Library:
    """The library, or RuntimeError saying why the kernels cannot run."""
    library, why_not = _library()
    if library is None:
        raise RuntimeError(f"the native kernels cannot run: {why_not}")
    return library


def instruction_sets() -> list[str]:
    """The instruction sets the kernels can run on this CPU, best first (empty where they cannot run at all)."""
    library = _library()[0]
    return [] if library is None else _supported(library)


def kernels_unavailable() -> str | None:
    """Why the kernels cannot run in this process, or None when they can."""
    return _library()[1]


def planes_from_pixels(windows: list[np.ndarray], scale: float) -> np.ndarray:
    """(n, n, C) uint8 windows (rows may be strided, each row's pixels contiguous) -> (N, C, n, n) float32, each
    pixel times ``scale``: numpy's ``np.stack(windows).transpose(0, 3, 1, 2).astype(np.float32) * np.float32(scale)``
    to the bit, in one pass instead of four. Needs the kernels (see :func:`kernels_unavailable`)."""
    library = _kernels()
    n, _, c = windows[0].shape
    out = np.empty((len(windows), c, n, n), np.float32)
    for window, planes in zip(windows, out, strict=True):
        if window.dtype != np.uint8 or window.shape != (n, n, c) or window.strides[1:] != (c, 1):
            raise ValueError(f"expected ({n}, {n}, {c}) uint8 windows with contiguous rows, got {window.shape}")
        library.lib.fsrcnn_planes_from_u8(
            library.address(window), window.strides[0], n, c, scale, library.address(planes)
        )
    return out


class _Conv:
    """One convolution (+ PReLU) with its weights packed as fsrcnn_conv reads them on instruction set ``isa``."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, slope: np.ndarray | None, isa: str):
        self._library = _kernels()
        self._isa_code = _isa_code(self._library, isa)
        self.cout, self.cin, self.k, _ = weight.shape
        self.block = next(b for b in _block_sizes(self._library, self._isa_code) if self.cout % b == 0)
        packed = weight.reshape(self.cout // self.block, self.block, self.cin, self.k, self.k)
        self.weight = np.ascontiguousarray(packed.transpose(0, 2, 3, 4, 1), np.float32)  # [cout/b][cin][k][k][b]
        self.bias = np.ascontiguousarray(bias, np.float32)
        self.slope = None if slope is None else np.ascontiguousarray(slope, np.float32)

    def out_shape(self, x: np.ndarray) -> tuple[int, int, int]:
        return (self.cout, x.shape[1] - self.k + 1, x.shape[2] - self.k + 1)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(Cin, H, W) -> (Cout, H - k + 1, W - k + 1). ``x`` may be a crop of a larger array, if its rows are
        contiguous float32; ``out``, if given, must be C-contiguous float32 of that shape."""
        shape = self.out_shape(x)
        out = np.empty(shape, np.float32) if out is None else out
        if x.shape[0] != self.cin or x.dtype != np.float32 or x.strides[2] != 4 or min(shape) < 1:
            raise ValueError(f"expected ({self.cin}, >= {self.k}, >= {self.k}) float32 rows, got {x.shape} {x.dtype}")
        if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"expected a C-contiguous float32 output of {shape}")
        plane, row = x.strides[0] // 4, x.strides[1] // 4
        address = self._library.address
        weights = (address(self.weight), address(self.bias), address(self.slope), self.cout, self.block, self.k)
        args = (self._isa_code, address(x), self.cin, plane, row, *weights, address(out), *shape[1:])
        if self._library.lib.fsrcnn_conv(*args):
            raise RuntimeError(f"fsrcnn_conv has no kernel for blocks of {self.block} channels")
        return out

    def fill(self, layer) -> None:
        """Write this convolution into ``layer``, an FsrcnnLayer that fsrcnn_forward reads (it points into this
        object's arrays: keep the object alive as long)."""
        address = self._library.address
        layer.weight, layer.bias, layer.slope = address(self.weight), address(self.bias), address(self.slope)
        layer.cin, layer.cout, layer.block, layer.k = self.cin, self.cout, self.block, self.k


def _block_sizes(library: Library, isa: int) -> list[int]:
    """The output channels per kernel call that fsrcnn.c has for ``isa``, largest first."""
    sizes = library.ffi.new("int[]", 16)
    count = library.lib.fsrcnn_block_sizes(isa, sizes, len(sizes))
    return list(sizes)[:count]


class NativeNetwork:
    """An SRNet's forward pass on the kernels: (N, 3, T + 2c, T + 2c) float32 tiles -> (N, 3, sT, sT).

    ``isa``: the instruction set to run on (one of :func:`instruction_sets`; None = the best this CPU has); ``band``:
    the rows each layer computes at a time (None = ``BAND_ROWS`` of the instruction set; the result does not
    depend on it, only the speed). Raises
    ValueError for a file that is not consistent kernel weights (``export.kernel_weights``), or for an instruction set
    this CPU does not run: the kernels trust the shapes they are given, so every one is checked here or before each
    call.
    """

    def __init__(self, path: Path, isa: str | None = None, band: int | None = None):
        self._library = _kernels()
        supported = _supported(self._library)
        self.isa = supported[0] if isa is None else isa
        if self.isa not in supported:
            raise ValueError(f"this CPU cannot run the native kernels on {self.isa!r}; it runs {supported}")
        self.band = BAND_ROWS[self.isa] if band is None else band
        if self.band < 1:
            raise ValueError(f"band must be at least 1 row, got {self.band}")
        self._isa_code = _isa_code(self._library, self.isa)  # what the C takes, looked up once, not per tile
        with np.load(path, allow_pickle=False) as f:
            arrays = dict(f)
        self.scale, self.context = int(arrays["scale"]), int(arrays["context"])
        n = sum(1 for k in arrays if k.startswith("conv") and k.endswith(".weight"))
        conv = partial(_Conv, isa=self.isa)
        self.body = [conv(*(arrays[f"conv{i}.{p}"] for p in ("weight", "bias", "slope"))) for i in range(n)]
        self.phases = conv(arrays["phases.weight"], arrays["phases.bias"], None)
        self.lag = np.ascontiguousarray(arrays["phases.lag"], np.int32)
        skip = arrays["skip.weight"]  # (C*s*s, 1, 5, 5): a group of s*s phases per colour
        self.channels = skip.shape[0] // self.scale**2
        s2 = self.scale**2
        self.skips = [conv(skip[c * s2 : (c + 1) * s2], np.zeros(s2, np.float32), None) for c in range(self.channels)]
        self.crop = int(arrays["skip.crop"])
        self._check_geometry(path)
        convs = [*self.body, self.phases, *self.skips]
        self._layers = self._library.ffi.new("FsrcnnLayer[]", len(convs))
        for layer, conv in zip(self._layers, convs, strict=True):
            conv.fill(layer)

    def _check_geometry(self, path: Path) -> None:
        """Each layer takes what the one before gives, and every tile's output reads inside the maps it is made
        from: the learned phases at lag[r] + T (of T + 2c - shrink) and the skip's window at crop + T + 4."""
        layers = [*self.body, self.phases]
        chained = all(a.cout == b.cin for a, b in zip(layers, layers[1:], strict=False))
        shrink = sum(conv.k - 1 for conv in layers)
        s, lag = self.scale, self.lag
        problems = {
            "the layers' channels do not chain": not chained or self.body[0].cin != self.channels,
            f"the phases are not {self.channels} x {s}^2": self.phases.cout != self.channels * s * s,
            f"lag is not {s} offsets >= 0": len(lag) != s or lag.min() < 0,
            "the phases' windows run past the features": len(lag) and lag.max() > 2 * self.context - shrink,
            "the skip's window does not fit the context": 2 * (self.context - self.crop) != self.skips[0].k - 1
            or any(sk.cin != 1 or sk.cout != s * s for sk in self.skips),
        }
        wrong = [what for what, bad in problems.items() if bad]
        if wrong:
            raise ValueError(f"{path} holds no consistent kernel weights: {'; '.join(wrong)}")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, T + 2c, T + 2c) float32 in [0, 1] -> (N, 3, sT, sT) float32 (not clipped)."""
        batch, (h, w) = self._checked(batch)
        out = np.empty((len(batch), self.channels, self.scale * h, self.scale * w), np.float32)
        for x, o in zip(batch, out, strict=True):
            self._tile(x, f32=o)
        return out

    def run_pixels(self, batch: np.ndarray) -> np.ndarray:
        """As ``run``, then as ``service.runtime.engine.to_pixels(..., np.uint8)``: (N, sT, sT, 3) 8-bit pixels."""
        batch, (h, w) = self._checked(batch)
        out = np.empty((len(batch), self.scale * h, self.scale * w, self.channels), np.uint8)
        for x, o in zip(batch, out, strict=True):
            self._tile(x, u8=o)
        return out

    def _checked(self, batch: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The batch as C-ordered float32 and the size of its tiles without context."""
        if batch.ndim != 4 or batch.shape[1] != self.channels or min(batch.shape[2:]) <= 2 * self.context:
            raise ValueError(f"expected (N, {self.channels}, T + {2 * self.context}, ...) tiles, got {batch.shape}")
        return np.ascontiguousarray(batch, np.float32), (
            batch.shape[2] - 2 * self.context,
            batch.shape[3] - 2 * self.context,
        )

    def _tile(self, x: np.ndarray, f32: np.ndarray | None = None, u8: np.ndarray | None = None) -> None:
        """One C-contiguous (3, T + 2c, T + 2c) tile into ``f32`` (3, sT, sT) or ``u8`` (sT, sT, 3), in one call.
        The layers' line buffers, the phases and the skip live in this thread's workspace: fresh arrays would be
        page-faulted in on every tile."""
        if x.shape[0] != self.channels or x.dtype != np.float32 or not x.flags.c_contiguous:
            raise ValueError(f"expected a C-contiguous ({self.channels}, h, w) float32 tile, got {x.shape} {x.dtype}")
        buffers = [_WORKSPACE.take(slot, size) for slot, size in enumerate(self._buffer_sizes(*x.shape[1:]))]
        address = self._library.address
        network = (self._layers, len(self.body), self.channels, self.scale, self.crop, address(self.lag))
        lines, learned, skip = (address(b) for b in buffers)
        tile = (address(x), *x.shape[1:], lines, self.band, learned, skip, address(f32), address(u8))
        if self._library.lib.fsrcnn_forward(self._isa_code, *network, *tile):
            raise RuntimeError("fsrcnn_forward has no kernel for one of the layers")

    def _buffer_sizes(self, height: int, width: int) -> tuple[int, int, int]:
        """Floats fsrcnn_forward writes in each buffer for a tile of height x width: the body's line buffers, the
        learned phases' planes, the skip's s*s phases of each colour."""
        lines = self._library.lib.fsrcnn_line_floats(self._layers, len(self.body), height, width, self.band)
        h, w = height, width
        for conv in [*self.body, self.phases]:
            h, w = h - conv.k + 1, w - conv.k + 1
        core = (height - 2 * self.context) * (width - 2 * self.context)
        return lines, self.phases.cout * h * w, self.channels * self.scale**2 * core


class _Workspace(threading.local):
    """Per-thread scratch arrays, grown as needed and reused by every model and tile."""

    def __init__(self):
        self.buffers: dict[int, np.ndarray] = {}

    def take(self, slot: int, size: int) -> np.ndarray:
        """Buffer ``slot``: at least ``size`` floats."""
        if slot not in self.buffers or self.buffers[slot].size < size:
            self.buffers[slot] = np.empty(size, np.float32)
        return self.buffers[slot]


_WORKSPACE = _Workspace()
