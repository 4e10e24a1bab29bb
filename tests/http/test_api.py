"""The HTTP API, spoken to over real HTTP on 127.0.0.1 with the shipped models."""

import concurrent.futures as cf
import io
import json
import re
import time

import numpy as np
import pytest
from PIL import Image, ImageCms

from service import host
from service.runtime.engine import Engine
from service.runtime.fsrcnn_kernels import instruction_sets, kernels_unavailable
from service.settings import default_codec_threads
from tests.conftest import MODELS, assert_same_pixels, decode_image, encode_image, serving, smooth_image


def post_image(client, data: bytes, content_type: str = "image/png", **params):
    return client.post("/v1/upscale", content=data, headers={"Content-Type": content_type}, params=params)


@pytest.fixture(scope="module")
def png_rgb():
    return encode_image(Image.fromarray(smooth_image(37, 51)))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_png_comes_back_scale_times_larger(client, png_rgb, scale):
    r = post_image(client, png_rgb, scale=scale)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert decode_image(r.content).size == (51 * scale, 37 * scale)


def test_default_scale_is_two(client, png_rgb):
    assert decode_image(post_image(client, png_rgb).content).size == (102, 74)


@pytest.mark.parametrize(
    "fmt,media,pil", [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")]
)
def test_requested_format_is_returned(client, png_rgb, fmt, media, pil):
    r = post_image(client, png_rgb, format=fmt, quality=80)
    assert r.status_code == 200 and r.headers["content-type"] == media
    assert decode_image(r.content).format == pil


@pytest.mark.parametrize("pil,media", [("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("BMP", "image/png")])
def test_default_format_is_the_inputs_where_writable_else_png(client, pil, media):
    data = encode_image(Image.fromarray(smooth_image(20, 20)), pil)
    r = post_image(client, data, content_type="image/bmp" if pil == "BMP" else f"image/{pil.lower()}")
    assert r.headers["content-type"] == media


def test_multipart_field_image_is_accepted_and_names_the_download(client, png_rgb):
    r = client.post("/v1/upscale", files={"image": ("holiday photo.png", png_rgb, "image/png")}, params={"scale": 3})
    assert r.status_code == 200
    assert decode_image(r.content).size == (153, 111)
    assert 'filename="holiday_photo_x3.png"' in r.headers["content-disposition"]


def test_server_timing_names_the_stages(client, png_rgb):
    timing = post_image(client, png_rgb).headers["server-timing"]
    assert [m.split(";")[0] for m in timing.split(", ")] == ["decode", "queue", "infer", "encode"]


def test_pixels_equal_whole_image_inference(client):
    img = smooth_image(45, 70, seed=3)
    r = post_image(client, encode_image(Image.fromarray(img)))
    reference = Engine(MODELS / "fast_x2.onnx", tile=512, prefer_gpu=False)  # the test server runs on the CPU
    expected = reference.upscale(("fast", 2), img.astype(np.float32) / 255)
    assert_same_pixels(np.asarray(decode_image(r.content)), expected)


def test_alpha_channel_is_kept_and_upscaled(client):
    rgba = np.dstack([smooth_image(30, 40), np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))])
    out = decode_image(post_image(client, encode_image(Image.fromarray(rgba))).content)
    assert out.mode == "RGBA" and out.size == (80, 60)
    alpha = np.asarray(out)[:, :, 3].astype(int)
    assert alpha[:, 0].max() < 10 and alpha[:, -1].min() > 245


def test_palette_with_transparency_keeps_transparency(client):
    im = Image.fromarray(smooth_image(24, 24)).quantize(16)
    im.info["transparency"] = 0
    out = decode_image(post_image(client, encode_image(im, transparency=0)).content)
    assert out.mode == "RGBA" and np.asarray(out)[:, :, 3].min() == 0


def test_grayscale_stays_grayscale(client):
    out = decode_image(post_image(client, encode_image(Image.fromarray(smooth_image(20, 30)[:, :, 0]))).content)
    assert out.mode == "L" and out.size == (60, 40)


def test_sixteen_bit_grayscale_png_stays_sixteen_bit(client):
    gray16 = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    out = decode_image(post_image(client, encode_image(Image.fromarray(gray16))).content)
    assert out.mode.startswith("I") and out.size == (64, 64)
    values = np.asarray(out)
    assert values.max() > 255 and len(np.unique(values)) > 256  # real 16-bit precision, not 8 bits scaled


def test_exif_orientation_is_applied(client):
    im = Image.fromarray(smooth_image(20, 40))  # 40 wide, 20 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(post_image(client, encode_image(im, "JPEG", exif=exif.tobytes()), "image/jpeg").content)
    assert out.size == (40, 80)
    assert out.getexif().get(0x0112, 1) == 1


def test_icc_profile_is_carried_to_the_output(client):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = Image.fromarray(smooth_image(16, 16))
    for fmt, media in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        out = decode_image(post_image(client, encode_image(im, fmt, icc_profile=icc), media).content)
        assert out.info.get("icc_profile") == icc


def test_cmyk_jpeg_comes_back_rgb(client):
    im = Image.fromarray(smooth_image(16, 16)).convert("CMYK")
    out = decode_image(post_image(client, encode_image(im, "JPEG"), "image/jpeg").content)
    assert out.mode == "RGB" and out.size == (32, 32)


def test_twenty_concurrent_requests_of_different_sizes_all_come_back_right(client):
    sizes = [(8 + 7 * i, 90 - 3 * i) for i in range(20)]
    payloads = [encode_image(Image.fromarray(smooth_image(h, w, seed=i))) for i, (h, w) in enumerate(sizes)]
    with cf.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda p: post_image(client, p, scale=2), payloads))
    engine = Engine(MODELS / "fast_x2.onnx", tile=512, prefer_gpu=False)  # whole-image inference as the reference
    for (h, w), payload, r in zip(sizes, payloads, responses, strict=True):
        assert r.status_code == 200
        got = np.asarray(decode_image(r.content))
        src = np.asarray(decode_image(payload)).astype(np.float32) / 255
        assert got.shape == (2 * h, 2 * w, 3)
        assert_same_pixels(got, engine.upscale(("fast", 2), src))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_every_asset_from_the_service_itself(client, page):
    """Air-gapped deployments keep their API docs: nothing the page references lives on another host."""
    html = client.get(page).text
    references = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", html)
    urls = {a or b for a, b in references}
    assert urls and not any(re.match(r"(https?:)?//", u) for u in urls), urls
    for url in urls:
        assert client.get(url).status_code == 200, url


def test_models_lists_every_scale_with_card_facts_and_provider(client):
    body = client.get("/v1/models").json()
    assert body["provider"] == "CPUExecutionProvider"
    assert (body["device"], body["device_reason"]) == ("cpu", "UPSCALER_DEVICE=cpu")  # as the test server is started
    assert {(m["variant"], m["scale"]) for m in body["models"]} >= {("fast", 2), ("fast", 3), ("fast", 4)}
    assert all(m["parameters"] and m["macs_per_input_pixel"] for m in body["models"])
    assert {m["kernels"] for m in body["models"]} == {"onnxruntime" if kernels_unavailable() else "native"}
    assert {m["instruction_set"] for m in body["models"]} == {instruction_sets()[0] if instruction_sets() else None}


@pytest.mark.skipif("avx2" not in instruction_sets(), reason=f"no AVX2 kernels here: {kernels_unavailable()}")
def test_the_kernels_run_on_the_instruction_set_asked_for(tmp_path):
    with serving(tmp_path, tile=32, variants='["fast"]', cpu_kernels="avx2") as (srv, c):
        assert {m["instruction_set"] for m in c.get("/v1/models").json()["models"]} == {"avx2"}
        r = c.post("/v1/upscale", params={"scale": 2}, content=encode_image(Image.fromarray(smooth_image(40, 30))))
        assert r.status_code == 200 and decode_image(r.content).size == (60, 80)


def test_models_reports_the_batch_size_in_use(client):
    assert client.get("/v1/models").json()["max_batch"] == 8  # as the test server is configured


def test_without_a_batch_size_the_cpu_gets_small_batches_for_its_kernels(tmp_path):
    """4 tiles where the native kernels run every model (they take a batch a tile at a time), 2 on ONNX Runtime."""
    expected = 2 if kernels_unavailable() else 4
    with serving(tmp_path, tile=32, variants='["fast"]') as (srv, c):
        assert c.get("/v1/models").json()["max_batch"] == expected
        codec_threads = default_codec_threads(on_gpu=False, cores=host.available_cores())
        assert f"ready: batches of up to {expected} tiles, {codec_threads} codec threads" in srv.log_path.read_text()
        r = c.post("/v1/upscale", params={"scale": 2}, content=encode_image(Image.fromarray(smooth_image(70, 50))))
        assert r.status_code == 200 and decode_image(r.content).size == (100, 140)


def test_on_onnx_runtime_the_cpu_gets_batches_of_two(tmp_path):
    with serving(tmp_path, tile=32, variants='["fast"]', cpu_kernels="onnxruntime") as (srv, c):
        assert c.get("/v1/models").json()["max_batch"] == 2


@pytest.mark.parametrize(("on_gpu", "cores", "expected"), [(True, 16, 16), (False, 16, 4), (False, 2, 2), (True, 1, 2)])
def test_codec_threads_default_to_what_keeps_up_with_the_engine(on_gpu, cores, expected):
    assert default_codec_threads(on_gpu, cores) == expected


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_openapi_documents_the_upscale_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/upscale"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}\{{{re.escape(want)}\}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_metrics_move_when_requests_are_served(client, png_rgb):
    before = client.get("/metrics").text
    post_image(client, png_rgb)
    post_image(client, b"not an image")
    after = client.get("/metrics").text
    for name, labels in [
        ("upscaler_requests_total", {"path": "/v1/upscale", "status": "200"}),
        ("upscaler_requests_total", {"path": "/v1/upscale", "status": "415"}),
        ("upscaler_model_executions_total", {"model": "fast_x2"}),
        ("upscaler_stage_duration_seconds_count", {"stage": "infer"}),
        ("upscaler_batch_size_count", {"model": "fast_x2"}),
    ]:
        assert _metric(after, name, **labels) > _metric(before, name, **labels), name
    assert "upscaler_queue_tiles" in after and "upscaler_inflight_requests" in after


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32


def access_entries(server, request_id: str) -> list[dict]:
    """The access log's entries for ``request_id``, once written: the line is written as the response ends, which the
    client may see first."""
    deadline = time.monotonic() + 5
    while True:
        lines = [ln for ln in server.log().splitlines() if '"logger": "service.access"' in ln]
        found = [e for e in map(json.loads, lines) if e["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_one_log_line_per_request_without_image_bytes(client, server, png_rgb):
    client.post("/v1/upscale", content=png_rgb, params={"scale": 3}, headers={"X-Request-ID": "one-line-check"})
    (entry,) = access_entries(server, "one-line-check")
    assert entry["in"] == "51x37" and "infer_ms" in entry and "PNG" not in json.dumps(entry)


def test_jpeg_quality_changes_the_size(client, png_rgb):
    small = post_image(client, png_rgb, format="jpeg", quality=10).content
    large = post_image(client, png_rgb, format="jpeg", quality=95).content
    assert len(small) < len(large)


def test_output_is_readable_with_pillow_after_round_trip(client, png_rgb):
    r = post_image(client, png_rgb, format="webp")
    assert Image.open(io.BytesIO(r.content)).size == (102, 74)


def _png16(pixels: np.ndarray) -> bytes:
    import png

    h, w, planes = pixels.shape
    buf = io.BytesIO()
    png.Writer(w, h, greyscale=False, alpha=planes == 4, bitdepth=16).write(buf, pixels.reshape(h, w * planes))
    return buf.getvalue()


def _read_png16(data: bytes) -> np.ndarray:
    import png

    w, h, rows, info = png.Reader(bytes=data).asDirect()
    assert info["bitdepth"] == 16
    return np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, info["planes"])


@pytest.mark.parametrize("planes", [3, 4])
def test_sixteen_bit_colour_png_stays_sixteen_bit(client, planes):
    ramp = np.linspace(0, 65535, 24 * 20 * planes).reshape(24, 20, planes).astype(np.uint16)
    out = _read_png16(post_image(client, _png16(ramp)).content)
    assert out.shape == (48, 40, planes)
    assert len(np.unique(out[:, :, 0])) > 256  # finer steps than 8 bits could hold


def test_the_access_log_is_one_json_object_per_line(client, server, png_rgb):
    headers = {"Content-Type": "image/png", "X-Request-ID": "json-log-check"}
    client.post("/v1/upscale", content=png_rgb, params={"scale": 3}, headers=headers)
    (entry,) = access_entries(server, "json-log-check")
    assert entry["status"] == 200 and entry["path"] == "/v1/upscale" and entry["in"] == "51x37"
    assert {"time", "level", "ms", "infer_ms"} <= set(entry)


def test_webp_effort_is_asked_for_per_request_and_bounded(client, png_rgb):
    assert post_image(client, png_rgb, format="webp", effort=6).status_code == 200
    assert post_image(client, png_rgb, format="webp", effort=7).status_code == 422


def test_the_response_names_the_model_that_ran(client, png_rgb):
    assert post_image(client, png_rgb, scale=3).headers["x-model"] == "fast_x3"
