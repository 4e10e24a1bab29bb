"""The run-length deflater writes zlib streams that zlib reads back byte for byte, about as small as ISA-L's."""

import io
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isal import isal_zlib
from PIL import Image, ImageDraw

from service.imageio import png_writer, rle_deflate
from service.imageio.rle_deflate import RunLengthDeflate

pytestmark = pytest.mark.skipif(rle_deflate.unavailable() is not None, reason=f"{rle_deflate.unavailable()}")

BLOCK = 1 << 17  # input bytes per deflate block in rle_deflate.c


def deflate(*parts: bytes) -> bytes:
    d = RunLengthDeflate()
    return b"".join(d.compress(p) for p in parts) + d.flush()


def runs(*pieces: tuple[int, int]) -> bytes:
    """Bytes made of (value, repeat) pieces."""
    return b"".join(bytes([value]) * repeat for value, repeat in pieces)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"a",
        b"aaa",  # a run needs a byte before it and MIN_RUN after: these stay literals
        b"aaaaa",
        runs((7, 259)),  # the longest run (258) and one more
        runs((7, 258 * 3 + 1), (8, 1)),
        runs((1, 63), (2, 70)),  # a run that crosses a 64-byte word
        runs((0, BLOCK - 2), (5, 10)),  # a run cut by the block boundary
        bytes(range(256)) * 300,  # no runs at all
    ],
    ids=["empty", "one byte", "three", "five", "259", "longest runs", "word boundary", "block boundary", "no runs"],
)
def test_edge_cases_round_trip(data):
    assert zlib.decompress(deflate(data)) == data


def test_incompressible_data_is_stored_and_round_trips():
    noise = np.random.default_rng(0).integers(0, 256, 3 * BLOCK, dtype=np.uint8).tobytes()
    stream = deflate(noise)
    assert zlib.decompress(stream) == noise
    assert len(stream) < len(noise) * 1.001 + 64  # stored blocks: raw size plus framing


def test_skewed_counts_get_length_limited_codes():
    """Fibonacci counts would give codes of 20+ bits; deflate allows 15, and four literals share one 56-bit write."""
    fib = [1, 1]
    while len(fib) < 26:
        fib.append(fib[-1] + fib[-2])
    symbols = np.repeat(np.arange(26, dtype=np.uint8) * 7, fib)  # ~318k bytes
    data = np.random.default_rng(1).permutation(symbols).tobytes()
    stream = deflate(data)
    assert zlib.decompress(stream) == data
    assert len(stream) < len(data) / 3  # Huffman-coded, not stored


def test_parts_join_into_one_stream():
    rng = np.random.default_rng(2)
    parts = [rng.integers(0, 4, n, dtype=np.uint8).tobytes() for n in (1, 1000, BLOCK + 17, 0, 5000)]
    assert zlib.decompress(deflate(*parts)) == b"".join(parts)


def test_parts_that_repeat_more_than_runs_can_say_are_deflated_by_isal():
    """Runs leave 14 of every 64 bytes of this pattern as literals; ISA-L's matches take the whole period."""
    rng = np.random.default_rng(5)
    pattern = np.concatenate([np.zeros(50, np.uint8), rng.integers(1, 256, 14, dtype=np.uint8)])
    repeated = np.tile(pattern, 4000).tobytes()
    noise = rng.integers(0, 8, 70_000, dtype=np.uint8).tobytes()
    stream = deflate(noise, repeated, noise)
    assert zlib.decompress(stream) == noise + repeated + noise
    assert len(stream) < len(deflate(noise, noise)) + 4000  # the repeated part costs a few kB, not 64 kB


def test_parts_larger_than_a_block_and_a_mebibyte_round_trip():
    rng = np.random.default_rng(7)
    smooth = np.cumsum(rng.integers(-1, 2, 1_500_000), dtype=np.int64).astype(np.uint8).tobytes()
    runny = np.repeat(rng.integers(0, 4, 40_000, dtype=np.uint8), rng.integers(1, 60, 40_000)).tobytes()
    assert zlib.decompress(deflate(smooth, runny[: BLOCK + 1], runny)) == smooth + runny[: BLOCK + 1] + runny


def test_threads_deflate_at_once_without_sharing_state():
    rng = np.random.default_rng(8)
    inputs = [
        np.repeat(rng.integers(0, 6, 30_000, dtype=np.uint8), rng.integers(1, 9, 30_000)).tobytes() for _ in range(8)
    ]
    with ThreadPoolExecutor(4) as pool:
        streams = list(pool.map(deflate, inputs))
    assert [zlib.decompress(z) for z in streams] == inputs


def test_an_empty_stream_is_as_short_as_zlibs():
    assert zlib.decompress(deflate()) == b""
    assert len(deflate(b"")) == len(zlib.compress(b""))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(1, 600)), max_size=60))
def test_any_mix_of_runs_and_literals_round_trips(pieces):
    data = runs(*pieces)
    assert zlib.decompress(deflate(data[: len(data) // 2], data[len(data) // 2 :])) == data


def test_upscaled_rows_compress_about_as_well_as_isal_level_1():
    """Smooth image rows after PNG's Up filter: what the encoder is for."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:512, 0:1536] / 512
    image = (np.sin(3 * x) * np.cos(2 * y) * 100 + 128 + rng.normal(0, 1.5, x.shape)).astype(np.uint8)
    filtered = np.diff(image, axis=0, prepend=0).astype(np.uint8).tobytes()
    ours, isal = len(deflate(filtered)), len(isal_zlib.compress(filtered, 1))
    assert ours < 1.05 * isal


def test_graphics_come_out_no_bigger_than_with_isal(monkeypatch):
    picture = Image.new("RGB", (256, 256), (240, 240, 235))
    draw = ImageDraw.Draw(picture)
    rng = np.random.default_rng(6)
    for k in range(30):
        x, y = (int(v) for v in rng.integers(0, 230, 2))
        draw.rectangle([x, y, x + 40, y + 25], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw.text((x, y + 30), f"label {k}", fill=(0, 0, 0))
    upscaled = np.asarray(picture.resize((512, 512), Image.Resampling.BICUBIC))
    ours = png_writer.encode_png(upscaled, level=1)
    monkeypatch.setattr(rle_deflate, "unavailable", lambda: "not built")
    assert len(ours) <= 1.01 * len(png_writer.encode_png(upscaled, level=1))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(ours))), upscaled)


def test_png_level_one_uses_it_and_falls_back_to_isal_without_it(monkeypatch):
    assert isinstance(png_writer._compressor(1), RunLengthDeflate)
    monkeypatch.setattr(rle_deflate, "unavailable", lambda: "not built")
    assert not isinstance(png_writer._compressor(1), RunLengthDeflate)
    color = np.random.default_rng(4).integers(0, 3, (40, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_writer.encode_png(color, level=1)))), color)
