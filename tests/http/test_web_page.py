"""The try-it page at `/`: served over HTTP everywhere, and used end to end in a headless Chromium.

The browser tests drive Debian's `chromium` (/usr/bin/chromium) through Playwright with no browser download;
they skip where either is missing. Set UPSCALER_SCREENSHOT=docs/web-page.png to save the page with a result.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import Server, encode_image, smooth_image, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
KEY = "k1"
RESULT_SHOWN = "document.querySelector('#result').naturalWidth > 0 && !document.querySelector('#result-panel').hidden"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("keyed"), tile=64, api_keys=f'["{KEY}"]', max_input_pixels=64 * 64)
    yield srv
    stop_server(srv)


def test_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
    for path, media in [("/static/app.js", "javascript"), ("/static/style.css", "text/css")]:
        r = client.get(path)
        assert r.status_code == 200 and media in r.headers["content-type"], path
    assert client.get("/static/nothing.js").status_code == 404
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_page_needs_no_key_but_the_api_does(keyed_server):
    with httpx.Client(base_url=keyed_server.url, timeout=30) as c:
        assert c.get("/").status_code == 200
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def upscale(page, path: Path, scale: int = 2, fmt: str | None = None) -> None:
    page.set_input_files("#file", str(path))
    page.select_option("#scale", str(scale))
    if fmt:
        page.select_option("#format", fmt)
    page.click("#upscale")


def test_upscale_in_the_browser_and_an_invalid_file(server, page, tmp_path):
    src = tmp_path / "gradient.png"
    src.write_bytes(encode_image(Image.fromarray(smooth_image(30, 41))))
    page.goto(f"{server.url}/")
    page.wait_for_selector("#scale option[value='3']", state="attached")
    assert page.input_value("#model") == "auto"  # the model made for the file, chosen by the service

    upscale(page, src, scale=3)
    page.wait_for_function(RESULT_SHOWN)
    assert page.eval_on_selector("#result", "img => [img.naturalWidth, img.naturalHeight]") == [123, 90]
    assert page.eval_on_selector("#before", "c => [c.width, c.height]") == [123, 90]
    assert page.get_attribute("#download", "download") == "gradient_x3.png"
    # as X-Model and X-Model-Reason say
    assert "model fast_x3; auto: not a lossy JPEG or WebP" in page.text_content("#summary")
    assert page.input_value("#zoom") == "fit"  # the whole image and its divider in view, whatever its size
    stages = page.eval_on_selector_all(".chip", "chips => chips.map(c => c.dataset.stage)")
    assert {"decode", "queue", "infer", "encode", "round trip"} <= set(stages)
    assert page.is_hidden("#error")

    # Dragging on the image moves the divider: at 25 % the result is clipped from the left by a quarter.
    box = page.locator("#stage").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 4, box["y"] + 10)
    page.mouse.up()
    assert abs(float(page.input_value("#split")) - 25) < 2

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not an image at all")
    upscale(page, bad)
    page.wait_for_selector("#error", state="visible")
    assert "Not an image the service can read" in page.text_content("#error")
    assert page.is_enabled("#upscale")


def test_a_width_and_height_in_the_browser(server, page, tmp_path):
    src = tmp_path / "wide.png"
    src.write_bytes(encode_image(Image.fromarray(smooth_image(30, 41))))
    page.goto(f"{server.url}/")
    page.wait_for_selector("#scale option[value='1.5']", state="attached")
    page.set_input_files("#file", str(src))
    page.fill("#width", "100")
    assert page.is_disabled("#scale") and page.is_hidden("#fit-label")  # the scale follows from the width
    page.fill("#height", "100")
    page.select_option("#fit", "cover")
    page.click("#upscale")
    page.wait_for_function(RESULT_SHOWN)
    assert page.eval_on_selector("#result", "img => [img.naturalWidth, img.naturalHeight]") == [100, 100]
    assert page.eval_on_selector("#before", "c => [c.width, c.height]") == [100, 100]
    assert page.get_attribute("#download", "download") == "wide_100x100.png"
    assert "model fast_x4" in page.text_content("#summary")  # 100 / 30 needs x4, resampled to 100 x 100

    page.fill("#width", "")
    page.fill("#height", "")
    page.select_option("#scale", "1.5")
    page.click("#upscale")
    page.wait_for_function("document.querySelector('#result').naturalWidth === 62")
    assert page.eval_on_selector("#result", "img => img.naturalHeight") == 45


def test_api_key_is_asked_for_and_kept_in_the_session_only(keyed_server, page, tmp_path):
    src = tmp_path / "small.png"
    src.write_bytes(encode_image(Image.fromarray(smooth_image(20, 24, seed=1))))
    page.goto(f"{keyed_server.url}/")
    page.wait_for_function("document.querySelector('#status').textContent.includes('API key')")

    upscale(page, src, fmt="webp")
    page.wait_for_selector("#error", state="visible")
    assert "API key" in page.text_content("#error")

    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.click("#upscale")
    page.wait_for_function(RESULT_SHOWN)
    assert page.eval_on_selector("#result", "img => [img.naturalWidth, img.naturalHeight]") == [48, 40]
    assert page.get_attribute("#download", "download") == "small_x2.webp"
    assert page.evaluate("sessionStorage.getItem('upscaler.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0

    big = tmp_path / "big.png"
    big.write_bytes(encode_image(Image.fromarray(smooth_image(80, 80))))
    upscale(page, big)
    page.wait_for_selector("#error", state="visible")
    assert page.text_content("#error").startswith("Too large: the image is 80x80 = 6400 pixels")


@pytest.mark.parametrize(
    "status,body,retry_after,expected",
    [
        (
            503,
            {"error": {"code": "overloaded", "message": "queue full"}},
            "1",
            "The service is busy right now. Try again in 1 s.",
        ),
        (503, {"error": {"code": "not_ready", "message": "loading"}}, "2", "The service is starting or shutting down."),
        (504, {"error": {"code": "deadline_exceeded", "message": "late"}}, None, "The service took too long"),
        (422, {"error": {"code": "validation_error", "message": "scale: bad"}}, None, "refused these settings: scale"),
        (502, None, None, "The service answered 502: HTTP 502"),
    ],
)
def test_error_responses_read_clearly(server, page, status, body, retry_after, expected):
    page.goto(f"{server.url}/")
    text = page.evaluate(
        """([status, body, retryAfter]) => errorInfo(new Response(body === null ? "<html>" : JSON.stringify(body), {
            status, headers: retryAfter ? {"Retry-After": retryAfter} : {}})).then((info) => info.text)""",
        [status, body, retry_after],
    )
    assert expected in text
