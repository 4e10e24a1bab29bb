"""Make docs/web-page.png: the web page with Set5's butterfly, saved as JPEG at quality 50, upscaled x2 by the model
``auto`` picks for it (``make screenshot``).

Starts the service on a free port, drives Debian's Chromium through Playwright, and saves the page. Needs the dev
extra (playwright), /usr/bin/chromium and ../shared/datasets/Set5.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from bench.serving import free_port, running

ROOT = Path(__file__).resolve().parent.parent
BUTTERFLY = ROOT.parent / "shared" / "datasets" / "Set5" / "butterfly.png"
RESULT_SHOWN = "document.querySelector('#result').naturalWidth > 0 && !document.querySelector('#result-panel').hidden"


def main(target: Path = ROOT / "docs" / "web-page.png") -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"UPSCALER_PORT": str(port), "UPSCALER_DEVICE": "cpu"}
    with tempfile.TemporaryDirectory() as tmp, running([sys.executable, "-m", "service"], env, url):
        with Image.open(BUTTERFLY) as im:
            small = im.convert("RGB").resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC)
        src = Path(tmp) / "butterfly.jpg"
        small.save(src, quality=50)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto(f"{url}/")
            page.wait_for_selector("#scale option[value='2']", state="attached")
            page.set_input_files("#file", str(src))
            page.click("#upscale")
            page.wait_for_function(RESULT_SHOWN)
            page.select_option("#zoom", "4")
            page.evaluate("document.querySelector('#viewport').scrollTo(0, 150)")
            page.screenshot(path=str(target), full_page=True)
            browser.close()
    print("wrote", target)


if __name__ == "__main__":
    main()
