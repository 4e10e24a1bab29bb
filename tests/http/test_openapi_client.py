"""The OpenAPI schema is good enough to generate a working client: openapi-python-client generates one from the
running service's /openapi.json (with client/openapi-python-client.yaml), and it upscales an image."""

import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, encode_image, smooth_image

GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.fixture(scope="module")
def generated(server, client, tmp_path_factory):
    if not GENERATOR.exists():
        pytest.skip("openapi-python-client is not installed (the dev extra has it)")
    folder = tmp_path_factory.mktemp("generated")
    spec = folder / "openapi.json"
    spec.write_bytes(client.get("/openapi.json").content)
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its ruff hooks
    config = ROOT / "client" / "openapi-python-client.yaml"
    command = [str(GENERATOR), "generate", "--path", str(spec), "--output-path", str(folder / "upscaler_client")]
    subprocess.run([*command, "--meta", "none", "--config", str(config)], env=env, check=True, capture_output=True)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("upscaler_client")
    finally:
        sys.path.remove(str(folder))


def test_a_generated_client_upscales_an_image(generated, server):
    from upscaler_client.api.default import upscale_v1_upscale_post as upscale
    from upscaler_client.models import UpscaleV1UpscalePostFilesBody
    from upscaler_client.types import File

    png = encode_image(Image.fromarray(smooth_image(20, 30)))
    body = UpscaleV1UpscalePostFilesBody(image=File(payload=io.BytesIO(png), file_name="a.png", mime_type="image/png"))
    with generated.Client(base_url=server.url, timeout=60) as api:
        response = upscale.sync_detailed(client=api, body=body, scale=3)
    assert response.status_code == 200 and response.headers["x-model"] == "fast_x3"
    assert Image.open(response.parsed.payload).size == (90, 60)


def test_a_generated_client_reads_the_error_body(generated, server):
    from upscaler_client.api.default import upscale_v1_upscale_post as upscale
    from upscaler_client.models import ErrorResponse, UpscaleV1UpscalePostFilesBody
    from upscaler_client.types import File

    body = UpscaleV1UpscalePostFilesBody(image=File(payload=io.BytesIO(b"not an image"), file_name="a.png"))
    with generated.Client(base_url=server.url, timeout=60) as api:
        error = upscale.sync(client=api, body=body)
    assert isinstance(error, ErrorResponse) and error.error.code == "unsupported_image"


def test_the_model_parameter_lists_the_variants_served(client):
    spec = client.get("/openapi.json").json()
    (model,) = [p for p in spec["paths"]["/v1/upscale"]["post"]["parameters"] if p["name"] == "model"]
    assert {"fast", "turbo"} <= set(model["schema"]["anyOf"][0]["enum"])
