"""HEIF/HEIC and AVIF uploads through the real server, files written by real encoders (libheif with x265 through
pillow-heif, libavif with aom through Pillow): 8, 10 and 12 bits (HEIC; Pillow's AVIF encoder writes 8 only),
orientation applied once, ICC profile, alpha and grayscale kept, sequences refused, and sizes checked from the
container's header."""

import io

import numpy as np
import pillow_heif
import png as pypng
import pytest
from PIL import Image, ImageCms

from bench.hostile import smooth, with_declared_size
from tests.conftest import decode_image, smooth_image
from tests.http.test_errors import assert_error

PICTURE = np.asarray(smooth(48, 64))  # (h, w): 64 x 48, without the texture that lossy coding would change
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()

pillow_heif.register_heif_opener()  # Pillow writes HEIF through it here, as the server reads it


def heif(im: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "HEIF", quality=95, **params)
    return buf.getvalue()


def avif(im: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "AVIF", quality=95, **params)
    return buf.getvalue()


ENCODERS = {"heif": heif, "avif": avif}


def upscale(client, data: bytes, **params) -> tuple[dict, Image.Image]:
    response = client.post("/v1/upscale", content=data, params=params)
    assert response.status_code == 200, response.text
    return response.headers, decode_image(response.content)


def rotated_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.fixture(scope="module")
def reference(client) -> np.ndarray:
    """The server's x2 of the same picture sent as PNG."""
    buf = io.BytesIO()
    Image.fromarray(PICTURE).save(buf, "PNG")
    return np.asarray(upscale(client, buf.getvalue(), format="png")[1], dtype=float)


@pytest.mark.parametrize("fmt", ENCODERS)
def test_an_eight_bit_photo_is_upscaled_like_the_same_picture_as_png(client, reference, fmt):
    headers, im = upscale(client, ENCODERS[fmt](Image.fromarray(PICTURE)), format="png")
    assert im.size == (128, 96) and im.mode == "RGB"
    assert np.abs(np.asarray(im, dtype=float) - reference).mean() < 2  # what the lossy encoding changed
    assert headers["x-model"] == "fast_x2"


def test_heic_comes_back_as_jpeg_and_avif_as_avif_by_default(client):
    assert upscale(client, heif(Image.fromarray(PICTURE)))[1].format == "JPEG"
    assert upscale(client, avif(Image.fromarray(PICTURE)))[1].format == "AVIF"


@pytest.mark.parametrize("fmt", ENCODERS)
def test_the_orientation_is_applied_once(client, reference, fmt):
    """Orientation 6 (turn 90° clockwise to view): libheif writes it as irot and turns on decoding; libavif writes irot,
    which Pillow reports as the EXIF orientation for the service to apply."""
    _, im = upscale(client, ENCODERS[fmt](Image.fromarray(PICTURE), exif=rotated_exif(6)), format="png")
    assert im.size == (96, 128)
    got = np.asarray(im, dtype=float)
    assert np.abs(got - np.rot90(reference, k=-1)).mean() < 2  # turned clockwise, once
    assert np.abs(got - np.rot90(reference, k=1)).mean() > 10  # not the other way (three turns)


@pytest.mark.parametrize("bits", [10, 12])
def test_a_ten_or_twelve_bit_heic_keeps_its_depth_in_a_sixteen_bit_png(client, bits, monkeypatch):
    deep = (PICTURE.astype(np.uint16) * 257 + 100).astype(np.uint16)  # values no 8-bit image has
    picture = pillow_heif.from_bytes(mode="RGB;16", size=(64, 48), data=deep.tobytes())
    monkeypatch.setattr(pillow_heif.options, "SAVE_HDR_TO_12_BIT", bits == 12)  # libheif's choice of depth
    buf = io.BytesIO()
    picture.save(buf, quality=95)
    with Image.open(buf) as written:
        assert written.info["bit_depth"] == bits
    response = client.post("/v1/upscale", content=buf.getvalue(), params={"format": "png"})
    assert response.status_code == 200, response.text
    width, height, rows, info = pypng.Reader(bytes=response.content).read()
    pixels = np.array(list(rows), dtype=np.uint16)
    assert (width, height, info["bitdepth"]) == (128, 96, 16)
    assert (pixels % 257 != 0).mean() > 0.5  # not 8-bit values widened


@pytest.mark.parametrize("fmt", ENCODERS)
def test_the_icc_profile_is_carried_to_the_output(client, fmt):
    _, im = upscale(client, ENCODERS[fmt](Image.fromarray(PICTURE), icc_profile=SRGB), format="png")
    assert im.info.get("icc_profile") == SRGB


def png_chunks(data: bytes) -> dict[bytes, bytes]:
    """Each chunk's type and data, read independently of the service's writer."""
    chunks, pos = {}, 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks.setdefault(data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return chunks


def test_a_heic_colour_space_given_as_nclx_is_carried_to_a_png_as_cicp(client):
    """Display P3 (H.273 primaries 12) with sRGB's transfer (13), stated by an nclx box and no ICC profile."""
    p3 = {"color_primaries": 12, "transfer_characteristics": 13, "matrix_coefficients": 6, "full_range_flag": 1}
    response = client.post(
        "/v1/upscale", content=heif(Image.fromarray(PICTURE), nclx_profile=p3), params={"format": "png"}
    )
    assert response.status_code == 200, response.text
    assert png_chunks(response.content)[b"cICP"] == bytes([12, 13, 0, 1])  # RGB (matrix 0), full range


def test_an_srgb_heic_gets_no_colour_chunk(client):
    response = client.post("/v1/upscale", content=heif(Image.fromarray(PICTURE)), params={"format": "png"})
    assert b"cICP" not in png_chunks(response.content) and b"iCCP" not in png_chunks(response.content)


@pytest.mark.parametrize("fmt", ENCODERS)
def test_alpha_is_kept(client, fmt):
    ramp = np.linspace(0, 255, 48 * 64).reshape(48, 64).astype(np.uint8)
    _, im = upscale(client, ENCODERS[fmt](Image.fromarray(np.dstack([PICTURE, ramp]))), format="png")
    assert im.mode == "RGBA"
    alpha = np.asarray(im.getchannel("A"), dtype=float)
    assert alpha[:10].mean() < 40 and alpha[-10:].mean() > 215


@pytest.mark.parametrize("fmt", ENCODERS)
def test_grayscale_stays_grayscale(client, fmt):
    _, im = upscale(client, ENCODERS[fmt](Image.fromarray(PICTURE[:, :, 1])), format="png")
    assert im.mode == "L" and im.size == (128, 96)


def test_an_avif_sequence_is_refused(client):
    frames = [Image.fromarray(smooth_image(32, 32, seed=i)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "AVIF", save_all=True, append_images=frames[1:], duration=100)
    assert_error(client.post("/v1/upscale", content=buf.getvalue()), 415, "unsupported_image")


def test_a_heif_of_several_pictures_is_refused(client):
    pictures = pillow_heif.from_pillow(Image.fromarray(smooth_image(32, 32)))
    pictures.add_from_pillow(Image.fromarray(smooth_image(32, 32, seed=1)))
    buf = io.BytesIO()
    pictures.save(buf, quality=90)
    assert_error(client.post("/v1/upscale", content=buf.getvalue()), 415, "unsupported_image")


@pytest.mark.parametrize("fmt", ENCODERS)
def test_a_size_past_the_limit_is_refused_from_the_containers_header(client, fmt):
    """The 'ispe' box says 5000 x 4000: 20 MP, over the 16.8 MP the server takes; no pixel is decoded. (A square
    picture: x265's 64 x 48 has a clean-aperture box, whose size libheif reports instead.)"""
    data = with_declared_size(ENCODERS[fmt](smooth(64, 64)), 5000, 4000)
    assert "16777216" in assert_error(client.post("/v1/upscale", content=data), 413, "too_large")["message"]


# --- AVIF out ---------------------------------------------------------------------------------------------------


def test_avif_out_carries_alpha_and_the_icc_profile(client):
    ramp = np.linspace(0, 255, 48 * 64).reshape(48, 64).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([PICTURE, ramp]))
    buf = io.BytesIO()
    rgba.save(buf, "PNG", icc_profile=SRGB)
    response = client.post("/v1/upscale", content=buf.getvalue(), params={"format": "avif"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/avif"
    assert 'filename="image_x2.avif"' in response.headers["content-disposition"]
    im = decode_image(response.content)
    assert (im.format, im.mode, im.size) == ("AVIF", "RGBA", (128, 96))
    assert im.info.get("icc_profile") == SRGB
    alpha = np.asarray(im.getchannel("A"), dtype=float)
    assert alpha[:10].mean() < 40 and alpha[-10:].mean() > 215


def test_avif_out_of_a_sixteen_bit_png_is_eight_bit_and_right(client, reference):
    deep = PICTURE.astype(np.uint16) * 257
    buf = io.BytesIO()
    pypng.Writer(64, 48, greyscale=False, bitdepth=16).write(buf, deep.reshape(48, -1).astype(int).tolist())
    _, im = upscale(client, buf.getvalue(), format="avif", quality=95)
    assert (im.mode, im.size) == ("RGB", (128, 96))
    assert np.abs(np.asarray(im, dtype=float) - reference).mean() < 2


def test_an_avif_wider_than_libavif_reads_is_refused_before_any_tile_runs(client):
    strip = io.BytesIO()
    Image.new("RGB", (8200, 4)).save(strip, "PNG")  # x4: 32800 wide
    body = assert_error(
        client.post("/v1/upscale", content=strip.getvalue(), params={"scale": 4, "format": "avif"}), 413, "too_large"
    )
    assert "AVIF holds at most 32768" in body["message"]
