"""What an upload may cost is checked before it is decoded: allowed formats, Pillow's pixel guard, JPEG scans,
frames, the output format's size; and what cannot be checked beforehand is bounded in time (DecoderPool)."""

import asyncio
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from bench.hostile import ico_with_png_frame, tiff_pages
from service.errors import Overloaded, TooCostly, TooLarge, UnsupportedImage, UpscalerError
from service.imageio import decoding, encoding
from service.imageio.decoder_pool import DecoderPool
from service.settings import Settings
from tests.conftest import encode_image, smooth_image

LIMITS = decoding.Limits(max_input_pixels=1 << 20, max_output_pixels=1 << 24)
PICTURE = Image.fromarray(smooth_image(40, 56))


def jpeg(**params) -> bytes:
    return encode_image(PICTURE, "JPEG", **params)


def scans(data: bytes) -> int:
    return data.count(b"\xff\xda")  # in these small files no entropy-coded byte pair looks like SOS


def with_empty_scans(data: bytes, n: int) -> bytes:
    return data[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x10" * n + data[-2:]


@pytest.mark.parametrize(
    "params", [{}, {"progressive": True}, {"progressive": True, "optimize": True}, {"restart_marker_blocks": 1}]
)
def test_jpegs_as_encoders_write_them_are_decoded(params):
    data = jpeg(**params)
    assert decoding.decode(data, LIMITS).rgb.shape == (40, 56, 3)


def test_a_jpeg_with_more_scans_than_any_encoder_writes_is_refused_before_it_is_opened(monkeypatch):
    data = with_empty_scans(jpeg(progressive=True), decoding.MAX_JPEG_SCANS)
    assert scans(data) > decoding.MAX_JPEG_SCANS

    def opened(*args, **kwargs):
        raise AssertionError("opened before the scans were counted")

    monkeypatch.setattr(decoding.Image, "open", opened)
    with pytest.raises(UnsupportedImage, match=f"more than {decoding.MAX_JPEG_SCANS} scans"):
        decoding.decode(data, LIMITS)


def test_a_jpeg_with_as_many_scans_as_allowed_is_decoded():
    data = jpeg(progressive=True)
    data = with_empty_scans(data, decoding.MAX_JPEG_SCANS - scans(data))
    assert scans(data) == decoding.MAX_JPEG_SCANS
    assert decoding.decode(data, LIMITS).width == 56


def test_a_format_outside_the_allowed_ones_is_refused_and_named():
    with pytest.raises(UnsupportedImage, match="PNG, JPEG"):
        decoding.decode(encode_image(PICTURE, "TGA"), LIMITS, formats=("PNG", "JPEG"))
    assert decoding.decode(encode_image(PICTURE, "TGA"), LIMITS, formats=("TGA",)).width == 56


def test_a_png_is_not_read_where_png_is_not_allowed():
    with pytest.raises(UnsupportedImage):
        decoding.decode(encode_image(PICTURE, "PNG"), LIMITS, formats=("JPEG",))


def test_pillows_guard_refuses_a_container_frame_over_the_pixel_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after the test
    decoding.guard_pixels(LIMITS.max_input_pixels)  # as the service does at start-up
    with pytest.raises(TooLarge, match=f"holds more than {LIMITS.max_input_pixels}"):  # Pillow refused, in open()
        decoding.decode(ico_with_png_frame(2048), LIMITS, formats=("ICO",))


def test_a_many_page_tiff_is_refused_from_its_second_page():
    data = tiff_pages(300)
    t0 = time.perf_counter()
    with pytest.raises(UnsupportedImage, match="multi-frame"):
        decoding.decode(data, LIMITS)
    assert time.perf_counter() - t0 < 1


@pytest.mark.parametrize(
    ("size", "scale", "fmt", "refused"),
    [
        ((4096, 60), 4, "webp", True),  # 16384 wide
        ((4095, 60), 4, "webp", False),  # 16380
        ((60, 16400), 4, "jpeg", True),
        ((16375, 8), 4, "jpeg", False),  # 65500, libjpeg's largest
        ((16376, 8), 4, "jpeg", True),
        ((8192, 8), 4, "avif", False),  # 32768, what libavif reads back
        ((8193, 8), 4, "avif", True),
        ((100_000, 1), 4, "png", False),
    ],
)
def test_the_output_formats_own_size_limits_are_checked(size, scale, fmt, refused):
    if refused:
        with pytest.raises(TooLarge, match=f"{fmt.upper()} holds at most .* ask for format=png"):
            encoding.check_output(size[0] * scale, size[1] * scale, fmt)
    else:
        encoding.check_output(size[0] * scale, size[1] * scale, fmt)


@pytest.mark.parametrize("formats", [["PNG", "NOSUCH"], [], ["PNG", "ICNS"]])
def test_input_formats_that_cannot_be_served_safely_are_refused_at_start(formats):
    with pytest.raises(ValidationError, match="UPSCALER_INPUT_FORMATS"):
        Settings(input_formats=formats)


def test_input_formats_are_taken_in_any_case():
    assert Settings(input_formats=["png", "Jpeg"]).input_formats == ["PNG", "JPEG"]


# --- the time budget --------------------------------------------------------------------------------------------


def run(coro):
    return asyncio.run(coro)


def test_a_decode_past_its_budget_is_answered_at_once_and_its_thread_abandoned():
    release = threading.Event()

    async def body():
        pool = DecoderPool(2, budget_s=0.1, max_abandoned=1)
        t0 = time.monotonic()
        with pytest.raises(TooCostly, match="longer than 0.1 s"):
            await pool.run(release.wait, 10)
        assert time.monotonic() - t0 < 1 and pool.abandoned == 1
        release.set()
        for _ in range(100):  # the abandoned thread finishes and is counted out
            if pool.abandoned == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.abandoned == 0
        assert await pool.run(lambda: 42) == 42
        pool.shutdown()

    run(body())


def test_while_too_many_decodes_overrun_new_uploads_are_turned_away():
    release = threading.Event()

    async def body():
        pool = DecoderPool(2, budget_s=0.05, max_abandoned=2)
        for _ in range(2):
            with pytest.raises(TooCostly):
                await pool.run(release.wait, 10)
        with pytest.raises(Overloaded):
            await pool.run(lambda: 1)
        release.set()
        pool.shutdown()

    run(body())


def test_slow_decodes_within_their_budget_leave_the_other_slots_to_quick_ones():
    async def body():
        pool = DecoderPool(3, budget_s=5, max_abandoned=1)
        slow = [asyncio.ensure_future(pool.run(time.sleep, 0.5)) for _ in range(2)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        assert await pool.run(lambda: "quick") == "quick"
        assert time.monotonic() - t0 < 0.3
        await asyncio.gather(*slow)
        pool.shutdown()

    run(body())


# --- fuzzing ----------------------------------------------------------------------------------------------------

SEEDS = [encode_image(PICTURE, fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")]
SEEDS += [jpeg(progressive=True), encode_image(PICTURE.convert("RGBA"), "PNG")]
SEEDS += [encode_image(PICTURE, fmt, quality=60) for fmt in ("HEIF", "AVIF")]  # decoding registered HEIF's plugin
SEEDS += [encode_image(PICTURE.convert("RGBA"), fmt, quality=60) for fmt in ("HEIF", "AVIF")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 4000),
)
def test_decoding_damaged_files_gives_pixels_or_a_4xx_and_nothing_else(seed, edits, cut):
    data = bytearray(seed[: max(cut, 8)] if cut < len(seed) else seed)
    for at, value in edits:
        if at < len(data):
            data[at] = value
    try:
        decoded = decoding.decode(bytes(data), LIMITS)
    except UpscalerError as exc:
        assert 400 <= exc.status < 500
    else:
        assert decoded.rgb.shape == (decoded.height, decoded.width, 3)
        assert decoded.width * decoded.height <= LIMITS.max_input_pixels


def test_uploads_waiting_for_a_slot_do_not_start_past_the_cap_on_overrun_decodes():
    release, started = threading.Event(), []

    def slow():
        started.append(1)
        release.wait(10)

    async def body():
        pool = DecoderPool(2, budget_s=0.1, max_abandoned=1)
        outcomes = await asyncio.gather(*(pool.run(slow) for _ in range(4)), return_exceptions=True)
        release.set()
        pool.shutdown()
        return outcomes

    outcomes = run(body())
    assert [type(o) for o in outcomes] == [TooCostly, TooCostly, Overloaded, Overloaded] and len(started) == 2


def test_a_byte_that_is_not_a_marker_does_not_hide_the_scans_after_it():
    data = jpeg(progressive=True)
    at = data.index(b"\xff\xda")
    data = data[:at] + b"\x00" + data[at:]  # libjpeg skips it with a warning, and decodes every scan
    with pytest.raises(UnsupportedImage, match="scans"):
        decoding.decode(with_empty_scans(data, decoding.MAX_JPEG_SCANS), LIMITS)


def test_counting_scans_through_megabytes_of_stuffed_bytes_takes_no_time():
    data = jpeg(progressive=True)
    at = data.index(b"\xff\xda")
    end = at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    data = data[:end] + b"\xff\x00" * 5_000_000 + data[end:]  # 10 MB of escaped 0xFF in the first scan
    t0 = time.perf_counter()
    decoding._check_jpeg_scans(data)
    assert time.perf_counter() - t0 < 0.5
