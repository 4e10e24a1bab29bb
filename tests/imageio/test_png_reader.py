"""The fast PNG reader gives exactly Pillow's pixels for plain PNGs, and leaves every other file to Pillow."""

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import png as pypng
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from service.errors import TooLarge, UnsupportedImage
from service.imageio import decoding, png_reader
from tests.conftest import encode_image, png_chunk, smooth_image

pytestmark = pytest.mark.skipif(png_reader.unavailable() is not None, reason=f"{png_reader.unavailable()}")

COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type
LIMITS = decoding.Limits(max_input_pixels=1 << 30, max_output_pixels=1 << 32)


def ihdr(width: int, height: int, channels: int = 3, depth: int = 8, interlace: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, COLOUR_TYPE[channels], 0, 0, interlace))


def filtered(pixels: np.ndarray, filters: list[int]) -> bytes:
    """PNG's filtered rows (specification, section 9), written independently of png_unfilter.c: each row's
    prediction from the original pixels, the filter type first."""
    h, w, c = pixels.shape
    x = pixels.reshape(h, w * c).astype(np.int16)
    up = np.vstack([np.zeros((1, w * c), np.int16), x[:-1]])
    left = np.hstack([np.zeros((h, c), np.int16), x[:, :-c]])
    upper_left = np.hstack([np.zeros((h, c), np.int16), up[:, :-c]])
    p = left + up - upper_left
    pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upper_left))
    predictions = [np.zeros_like(x), left, up, (left + up) >> 1, paeth]
    rows = [bytes([f]) + ((x[y] - predictions[f][y]) & 255).astype(np.uint8).tobytes() for y, f in enumerate(filters)]
    return b"".join(rows)


def plain_png(
    pixels: np.ndarray, filters: list[int] | None = None, *, before: bytes = b"", after: bytes = b""
) -> bytes:
    """A plain 8-bit PNG of (H, W, C) pixels with the given filter per row (default: all Paeth)."""
    h, w, c = pixels.shape
    rows = filtered(pixels, filters if filters is not None else [4] * h)
    return _png(ihdr(w, h, c) + before, zlib.compress(rows), after)


def _png(head: bytes, stream: bytes, after: bytes = b"") -> bytes:
    return b"\x89PNG\r\n\x1a\n" + head + png_chunk(b"IDAT", stream) + after + png_chunk(b"IEND", b"")


def pillow_pixels(data: bytes) -> np.ndarray:
    a = np.asarray(Image.open(io.BytesIO(data)))
    return a[:, :, None] if a.ndim == 2 else a


def fast_pixels(data: bytes) -> np.ndarray | None:
    plain = png_reader.parse(data)
    assert plain is not None, "the reader did not take a plain PNG"
    return png_reader.read(plain)


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey+alpha", "rgb", "rgba"])
@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4], ids=["none", "sub", "up", "average", "paeth"])
def test_every_filter_type_reads_as_pillow_reads_it(filter_type, channels):
    pixels = smooth_image(37, 29, channels, seed=filter_type)
    data = plain_png(pixels, [filter_type] * 37)
    assert np.array_equal(pillow_pixels(data), pixels)  # the test's own filters are right
    assert np.array_equal(fast_pixels(data), pixels)


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    channels=st.sampled_from([1, 2, 3, 4]),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_rows_of_any_filters_and_values_read_as_pillow_reads_them(height, width, channels, seed, data):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    filters = data.draw(st.lists(st.integers(0, 4), min_size=height, max_size=height))
    png = plain_png(pixels, filters)
    assert np.array_equal(fast_pixels(png), pillow_pixels(png))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_pillows_own_pngs_decode_to_what_pillow_decodes(mode, monkeypatch):
    """decoding.decode gives the same Decoded whichever reader ran: pixels, alpha, grey flag, format, no metadata."""
    channels = len(mode)
    im = Image.fromarray(smooth_image(300, 211, channels, seed=3).squeeze(), mode)
    buf = io.BytesIO()
    im.save(buf, "PNG")  # Pillow chooses each row's filter
    data = buf.getvalue()
    assert png_reader.parse(data) is not None
    fast = decoding.decode(data, LIMITS)
    monkeypatch.setattr(png_reader, "parse", lambda data: None)
    slow = decoding.decode(data, LIMITS)
    assert np.array_equal(fast.rgb, slow.rgb) and fast.rgb.flags.c_contiguous
    assert (fast.alpha is None) == (slow.alpha is None)
    if slow.alpha is not None:
        assert fast.alpha.mode == slow.alpha.mode and fast.alpha.tobytes() == slow.alpha.tobytes()
    for field in ("width", "height", "grayscale", "source_format", "icc_profile", "exif"):
        assert getattr(fast, field) == getattr(slow, field), field


def test_chunks_that_hold_nothing_kept_are_skipped():
    pixels = smooth_image(8, 8)
    before = png_chunk(b"gAMA", struct.pack(">I", 45455)) + png_chunk(b"sRGB", b"\x00") + png_chunk(b"pHYs", bytes(9))
    assert np.array_equal(fast_pixels(plain_png(pixels, before=before)), pixels)


def test_image_data_split_over_several_idat_chunks():
    pixels = smooth_image(40, 40, 4)
    stream = zlib.compress(filtered(pixels, [2] * 40))
    parts = [stream[i : i + 100] for i in range(0, len(stream), 100)]
    idat = b"".join(png_chunk(b"IDAT", p) for p in parts)
    data = b"\x89PNG\r\n\x1a\n" + ihdr(40, 40, 4) + idat + png_chunk(b"IEND", b"")
    assert np.array_equal(fast_pixels(data), pixels)


def _with_bad_crc(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 4  # first byte of IDAT's data
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


PIXELS = smooth_image(16, 12)
PLAIN = plain_png(PIXELS)
LEFT_TO_PILLOW = {
    "4-bit": _png(ihdr(12, 16, depth=4), zlib.compress(bytes(16 * 7))),
    "palette": _png(
        png_chunk(b"IHDR", struct.pack(">IIBBBBB", 12, 16, 8, 3, 0, 0, 0)) + png_chunk(b"PLTE", bytes(3)),
        zlib.compress(bytes(16 * 13)),
    ),
    "unknown interlace method": _png(ihdr(12, 16, interlace=2), b""),
    "ICC profile": plain_png(PIXELS, before=png_chunk(b"iCCP", b"p\x00\x00" + zlib.compress(b"profile"))),
    "EXIF": plain_png(PIXELS, before=png_chunk(b"eXIf", b"MM\x00*\x00\x00\x00\x08\x00\x00")),
    "text": plain_png(PIXELS, before=png_chunk(b"tEXt", b"Comment\x00hello")),
    "transparency": plain_png(PIXELS, before=png_chunk(b"tRNS", bytes(6))),
    "unknown chunk": plain_png(PIXELS, before=png_chunk(b"abCd", b"")),
    "empty gAMA": plain_png(PIXELS, before=png_chunk(b"gAMA", b"")),  # Pillow refuses it
    "short cHRM": plain_png(PIXELS, before=png_chunk(b"cHRM", bytes(31))),
    "empty sRGB": plain_png(PIXELS, before=png_chunk(b"sRGB", b"")),
    "long pHYs": plain_png(PIXELS, before=png_chunk(b"pHYs", bytes(10))),
    "chunk after the data": plain_png(PIXELS, after=png_chunk(b"tIME", bytes(7))),
    "bad CRC": _with_bad_crc(PLAIN),
    "no IEND": PLAIN[: PLAIN.index(b"IEND") - 4],
    "IHDR not first": PLAIN[:8] + png_chunk(b"gAMA", bytes(4)) + PLAIN[8:],
    "zero width": _png(ihdr(0, 16), zlib.compress(b"")),
    "not a PNG": b"GIF89a" + bytes(40),
}


@pytest.mark.parametrize("data", LEFT_TO_PILLOW.values(), ids=LEFT_TO_PILLOW.keys())
def test_files_that_are_not_plain_are_left_to_pillow(data):
    assert png_reader.parse(data) is None


GOOD_ROWS = filtered(PIXELS, [4] * 16)
NOT_AS_PROMISED = {
    "a row short": zlib.compress(GOOD_ROWS[:-13]),
    "a row more": zlib.compress(GOOD_ROWS + GOOD_ROWS[-37:]),
    "bytes after the stream": zlib.compress(GOOD_ROWS) + b"\x00",
    "stream cut short": zlib.compress(GOOD_ROWS)[:-6],
    "wrong checksum": zlib.compress(GOOD_ROWS)[:-1] + bytes([zlib.compress(GOOD_ROWS)[-1] ^ 1]),
    "not deflate": b"\x78\x01" + bytes(40),
    "filter type 5": zlib.compress(GOOD_ROWS[:37] + b"\x05" + GOOD_ROWS[38:]),
}


@pytest.mark.parametrize("stream", NOT_AS_PROMISED.values(), ids=NOT_AS_PROMISED.keys())
def test_data_that_are_not_what_the_header_promises_are_left_to_pillow(stream):
    assert png_reader.read(png_reader.parse(_png(ihdr(12, 16), stream))) is None


def test_a_corrupt_plain_png_gets_pillows_error():
    data = _png(ihdr(12, 16), NOT_AS_PROMISED["filter type 5"])
    with pytest.raises(UnsupportedImage, match="corrupt or truncated"):
        decoding.decode(data, LIMITS)


def test_the_size_limit_is_checked_before_the_data_are_inflated(monkeypatch):
    """A header that promises 2 gigapixels is refused as too large before the reader inflates anything."""
    data = _png(ihdr(50_000, 40_000), zlib.compress(bytes(1 << 20)))
    assert png_reader.parse(data) is not None

    def read(png):
        raise AssertionError("inflated before the size check")

    monkeypatch.setattr(png_reader, "read", read)
    with pytest.raises(TooLarge, match="50000x40000"):
        decoding.decode(data, decoding.Limits(max_input_pixels=1 << 24, max_output_pixels=1 << 26))


def test_a_broken_chunk_gets_pillows_answer():
    data = plain_png(PIXELS, before=png_chunk(b"gAMA", b""))
    with pytest.raises(UnsupportedImage, match="header could not be read"):
        decoding.decode(data, LIMITS)


def test_threads_read_at_once():
    images = [smooth_image(64 + i, 48, 1 + i % 4, seed=i) for i in range(8)]
    files = [plain_png(im, [i % 5 for i in range(im.shape[0])]) for im in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(fast_pixels, files * 4))
    assert all(np.array_equal(g, im) for g, im in zip(got, images * 4, strict=True))


def test_without_the_compiled_part_pillow_reads_every_png(monkeypatch):
    monkeypatch.setattr(png_reader, "unavailable", lambda: "not built")
    assert png_reader.parse(PLAIN) is None
    assert np.array_equal(decoding.decode(PLAIN, LIMITS).rgb, PIXELS)


def pypng_file(pixels: np.ndarray, interlace: bool, before: bytes = b"") -> bytes:
    """(H, W, C) uint8 or uint16 pixels written by pypng, an encoder independent of this reader; ``before``: chunks
    put after IHDR."""
    h, w, c = pixels.shape
    buf = io.BytesIO()
    writer = pypng.Writer(w, h, greyscale=c < 3, alpha=c in (2, 4), bitdepth=8 * pixels.itemsize, interlace=interlace)
    writer.write(buf, pixels.reshape(h, w * c).tolist())
    data = buf.getvalue()
    return data[:33] + before + data[33:]  # IHDR ends at byte 33


@pytest.mark.parametrize("interlace", [False, True], ids=["progressive rows", "Adam7"])
@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_eight_and_sixteen_bit_files_interlaced_or_not_are_read_exactly(channels, depth, interlace):
    dtype = np.uint16 if depth == 16 else np.uint8
    for h, w in ((37, 29), (1, 1), (3, 9)):  # sizes that leave some of Adam7's passes empty
        pixels = np.random.default_rng(h * w + channels).integers(0, 2**depth, (h, w, channels), dtype=dtype)
        got = fast_pixels(pypng_file(pixels, interlace))
        assert got is not None and got.dtype == dtype and np.array_equal(got, pixels)


def test_an_interlaced_eight_bit_file_is_what_pillow_reads():
    data = encode_image(Image.fromarray(smooth_image(45, 38)), "PNG", optimize=False)
    data = pypng_file(pillow_pixels(data), interlace=True)
    assert np.array_equal(fast_pixels(data), pillow_pixels(data))


def test_sixteen_bit_colour_with_a_profile_keeps_its_bits_and_its_profile():
    pixels = np.random.default_rng(1).integers(0, 65536, (20, 14, 4), dtype=np.uint16)
    profile = b"not really a profile"
    iccp = png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(profile))
    decoded = decoding.decode(pypng_file(pixels, interlace=False, before=iccp), LIMITS)
    assert decoded.rgb.dtype == np.uint16 and np.array_equal(decoded.rgb, pixels[:, :, :3])
    assert np.array_equal(np.asarray(decoded.alpha), pixels[:, :, 3].astype(np.float32))
    assert decoded.icc_profile == profile


def test_a_sixteen_bit_transparent_colour_becomes_alpha():
    pixels = np.random.default_rng(2).integers(0, 65536, (10, 12, 3), dtype=np.uint16)
    pixels[3, 4] = (1, 2, 3)
    trns = png_chunk(b"tRNS", struct.pack(">3H", 1, 2, 3))
    decoded = decoding.decode(pypng_file(pixels, interlace=True, before=trns), LIMITS)
    alpha = np.asarray(decoded.alpha)
    assert alpha[3, 4] == 0 and (alpha == 65535).sum() == alpha.size - 1


def test_a_broken_sixteen_bit_file_with_metadata_is_refused_not_left_to_a_slow_decoder():
    """4096 x 4096 Paeth-filtered zeros (a 140 KB file) with a bad CRC on the last IDAT: refused in a blink."""
    rows = (b"\x04" + bytes(4096 * 8)) * 4096
    stream = zlib.compress(rows, 9)
    idat = png_chunk(b"IDAT", stream[:-10]) + png_chunk(b"IDAT", stream[-10:])[:-1] + b"\x00"
    head = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4096, 4096, 16, 6, 0, 0, 0)) + png_chunk(b"tEXt", b"a\x00b")
    data = b"\x89PNG\r\n\x1a\n" + head + idat + png_chunk(b"IEND", b"")
    with pytest.raises(UnsupportedImage):
        decoding.decode(data, LIMITS)


def test_sixteen_bit_colour_with_a_suggested_palette_keeps_its_bits():
    pixels = np.random.default_rng(3).integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    decoded = decoding.decode(pypng_file(pixels, interlace=False, before=png_chunk(b"PLTE", bytes(9))), LIMITS)
    assert decoded.rgb.dtype == np.uint16 and np.array_equal(decoded.rgb, pixels)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_sixteen_bit_colour_turned_by_an_exif_chunk_after_the_data_is_turned():
    pixels = np.random.default_rng(4).integers(0, 65536, (6, 4, 3), dtype=np.uint16)  # 4 wide, 6 high
    data = pypng_file(pixels, interlace=False)
    late = png_chunk(b"eXIf", _exif(6))  # rotate 90° clockwise to display
    data = data[: data.index(b"IEND") - 4] + late + data[data.index(b"IEND") - 4 :]
    decoded = decoding.decode(data, LIMITS)
    assert (decoded.width, decoded.height) == (6, 4)


def test_sixteen_bit_colour_turned_by_xmp_is_turned():
    pixels = np.random.default_rng(5).integers(0, 65536, (6, 4, 3), dtype=np.uint16)
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    itxt = png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)
    decoded = decoding.decode(pypng_file(pixels, interlace=False, before=itxt), LIMITS)
    assert (decoded.width, decoded.height) == (6, 4)


def test_sixteen_bit_colour_with_an_upright_exif_chunk_after_the_data_keeps_its_bits_and_its_exif():
    pixels = np.random.default_rng(6).integers(0, 65536, (6, 4, 3), dtype=np.uint16)
    data = pypng_file(pixels, interlace=False)
    late = png_chunk(b"eXIf", _exif(1))
    data = data[: data.index(b"IEND") - 4] + late + data[data.index(b"IEND") - 4 :]
    decoded = decoding.decode(data, LIMITS)
    assert decoded.rgb.dtype == np.uint16 and np.array_equal(decoded.rgb, pixels) and decoded.exif == _exif(1)
