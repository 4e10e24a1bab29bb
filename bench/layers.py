"""Where a tile's time goes on the service's CPU kernels: each layer's GFLOP/s, bytes and share, against one-thread
SGEMM, per shipped model and instruction set.

    python -m bench.layers [--models fast_x2,fast_x4] [--tile 128] [--bands 2,4,8,16,0] [--quick]

One thread, one tile of ``--tile`` LR pixels with the model's context, as the service runs it (one single-threaded
run per core). Each convolution of ``service.runtime.fsrcnn_kernels.NativeNetwork`` (the body's layers, the learned
upsampler's phases, the bicubic skip's phases per colour) is timed on its own, on whole maps of the shapes the tile
gives it. Per layer: GFLOP/s (2 x multiply-adds of the layer as trained), the bytes it reads (input map and
weights) and writes (output map), and its share of the sum of the layers' times; beside them one-thread SGEMM
(numpy's OpenBLAS in a child process held to one thread, and for ``avx2`` to its AVX2 kernel, as ``bench.inference``
does), and the machine's caches, against which the maps' sizes can be read.

The whole tile is timed too, in one ``fsrcnn_forward`` call, as the service runs it: the body as a pipeline of line
buffers, a band of rows at a time (``BAND_ROWS``), so that no wide map goes through memory whole; it can be faster
than the sum of the layers timed alone. ``band_tile_ms`` times it at each of ``--bands`` (0: every map whole).
Writes ``bench/results/layers-<machine class>.json``; ``--quick`` prints it instead.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np

from bench.machine import MODELS, child_sgemm_gflops, machine_class, timed, write_result
from service.model_files import KERNEL_WEIGHTS_SUFFIX
from service.runtime.fsrcnn_kernels import BAND_ROWS, NativeNetwork, instruction_sets

WHOLE = 1 << 20  # a band that holds every map whole


def layer_runs(net: NativeNetwork, tile: int) -> list[tuple[str, object, np.ndarray]]:
    """``(name, conv, input map)`` for every convolution of one tile, in the order the tile runs them."""
    rng = np.random.default_rng(0)
    side = tile + 2 * net.context
    x = rng.random((net.channels, side, side), dtype=np.float32)
    runs, feature = [], x
    names = [f"body {i}" for i in range(len(net.body))] + ["phases"]
    for name, conv in zip(names, [*net.body, net.phases], strict=True):
        runs.append((name, conv, feature))
        feature = conv(feature)
    crop = x[:, net.crop : side - net.crop, net.crop : side - net.crop]
    runs += [(f"skip {c}", conv, np.ascontiguousarray(crop[c : c + 1])) for c, conv in enumerate(net.skips)]
    return runs


def describe_layer(name: str, conv, x: np.ndarray, seconds: float) -> dict:
    cout, h, w = conv.out_shape(x)
    flops = 2 * cout * h * w * conv.cin * conv.k * conv.k
    return {
        "layer": name,
        "shape": f"{conv.cin}->{conv.cout}, {conv.k}x{conv.k}",
        "ms": round(seconds * 1e3, 4),
        "mflop": round(flops / 1e6, 3),
        "gflops": round(flops / seconds / 1e9, 2),
        "bytes_read": int(x.nbytes + conv.weight.nbytes),
        "bytes_written": int(cout * h * w * 4),
    }


def tile_ms(model: str, isa: str, tile: int, repeat: int, band: int | None = None) -> float:
    """Milliseconds of one tile in one fsrcnn_forward call, median of ``repeat`` batches of 4."""
    net = NativeNetwork(MODELS / f"{model}{KERNEL_WEIGHTS_SUFFIX}.npz", isa=isa, band=band)
    batch = np.random.default_rng(1).random((4, net.channels, *[tile + 2 * net.context] * 2), dtype=np.float32)
    return timed(lambda: net.run_pixels(batch), repeat=repeat, warmup=2) * 1e3 / len(batch)


def measure(model: str, isa: str, tile: int, repeat: int, bands: list[int]) -> dict:
    net = NativeNetwork(MODELS / f"{model}{KERNEL_WEIGHTS_SUFFIX}.npz", isa=isa)
    layers = []
    for name, conv, x in layer_runs(net, tile):
        out = np.empty(conv.out_shape(x), np.float32)
        run: Callable[[], object] = lambda conv=conv, x=x, out=out: conv(x, out)  # noqa: E731
        layers.append(describe_layer(name, conv, x, timed(run, repeat=repeat, warmup=2)))
    total = sum(layer["ms"] for layer in layers)
    for layer in layers:
        layer["share"] = round(layer["ms"] / total, 3)
    whole_tile = tile_ms(model, isa, tile, repeat)
    mflop = sum(layer["mflop"] for layer in layers)
    return {
        "band": BAND_ROWS[isa],
        "tile_ms": round(whole_tile, 3),
        "layers_ms": round(total, 3),
        "tile_gflops": round(mflop / whole_tile, 2),  # MFLOP per ms = GFLOP/s
        "band_tile_ms": {str(b): round(tile_ms(model, isa, tile, repeat, b or WHOLE), 3) for b in bands},
        "layers": layers,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="fast_x2,fast_x3,fast_x4")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--bands", default="2,4,8,16,0", help="bands of rows to time the whole tile at (0: whole maps)")
    p.add_argument("--quick", action="store_true", help="small tile, few repeats; print, write nothing")
    args = p.parse_args(argv)
    tile, repeat, n = (32, 3, 256) if args.quick else (args.tile, 21, 1024)
    bands = [int(b) for b in args.bands.split(",") if b]
    isas = instruction_sets()
    sgemm = {isa: child_sgemm_gflops(n, 5, coretype="Haswell" if isa == "avx2" else None, threads=1) for isa in isas}
    result = {
        "tile": tile,
        "one_thread_sgemm_gflops": {isa: round(v, 1) for isa, v in sgemm.items()},
        "models": {
            model: {isa: measure(model, isa, tile, repeat, bands) for isa in isas} for model in args.models.split(",")
        },
    }
    for runs in result["models"].values():
        for isa, run in runs.items():
            run["tile_fraction_of_sgemm"] = round(run["tile_gflops"] / sgemm[isa], 3)
            for layer in run["layers"]:
                layer["fraction_of_sgemm"] = round(layer["gflops"] / sgemm[isa], 3)
    if args.quick:
        print(json.dumps(result))
    else:
        print("wrote", write_result(f"layers-{machine_class()}", result))
    return result


if __name__ == "__main__":
    main()
