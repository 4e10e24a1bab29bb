"""The serving path runs on ONNX Runtime, numpy and Pillow alone."""

import subprocess
import sys

from tests.conftest import ROOT


def test_serving_path_does_not_import_torch():
    code = (
        "import sys\n"
        "import service.http.app, service.runtime.engine, service.runtime.batcher, service.runtime.tiling\n"
        "import service.imageio.decoding, service.imageio.encoding, model.evaluate\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'onnx', 'torchvision'})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
