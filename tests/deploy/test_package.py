"""What ``pip install .`` gives a user: a wheel with the shipped models, the web page, the C headers and the
compiled parts, from which ``python -m service`` serves the shipped models with no source tree and no settings."""

import subprocess
import sys
import zipfile

import httpx
import pytest

from tests.conftest import ROOT, start_server, stop_server


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), "."]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("upscaler-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_carries_the_shipped_models_and_what_serving_reads(wheel):
    names = set(wheel.namelist())
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "export" / "models").glob("*.onnx")}
    assert shipped and shipped <= names
    assert {"export/models/fast_x2.json", "export/models/fast_x2_native.npz"} <= names
    assert {
        "service/http/static/index.html",
        "service/runtime/csrc/fsrcnn.h",
        "service/imageio/csrc/png_unfilter.h",
    } <= names
    assert not any(name.startswith("tests/") for name in names)


def test_the_installed_package_serves_the_shipped_models_from_anywhere(wheel, tmp_path):
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), wheel.filename]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    # Run from an empty folder, with only the installed package on the path: nothing comes from the clone.
    server = start_server(tmp_path, cwd=tmp_path, env={"PYTHONPATH": str(site)})
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]
        assert ("fast", 2) in {(m["variant"], m["scale"]) for m in models}
        code = "import service, sys; print(service.__file__)"
        where = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)}, text=True, capture_output=True
        ).stdout
        assert where.startswith(str(site))
    finally:
        stop_server(server)
