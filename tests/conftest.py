"""Shared fixtures: a real uvicorn server on 127.0.0.1 and images made in code."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.runtime.fsrcnn_kernels import instruction_sets, kernels_unavailable

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "export" / "models"
# Every model shipped (docs/model.md), as <variant>_x<scale>: at x2, x3 and x4 the three clean tiers, fast's four
# models for JPEG inputs and its one for WebP inputs; at x2 the quality tier's three for JPEG inputs.
SHIPPED_MODELS = (
    *(
        f"{variant}_x{scale}"
        for variant in ("fast", "turbo", "quality", "fast-webp-q50", *(f"fast-jpeg-q{q}" for q in (30, 50, 75, 90)))
        for scale in (2, 3, 4)
    ),
    *("quality-jpeg-q50_x2", "quality-jpeg-q75_x2", "quality-jpeg-q90_x2"),
)
DATASETS = ROOT.parent / "shared" / "datasets"
# Tests of the native CPU kernels skip where they cannot run (no compiler at install, neither AVX2 nor AVX-512),
# saying why; where they can, each test that takes ``isa`` runs once on every instruction set this CPU has.
needs_kernels = pytest.mark.skipif(kernels_unavailable() is not None, reason=f"{kernels_unavailable()}")
on_every_isa = pytest.mark.parametrize(
    "isa", instruction_sets() or [pytest.param(None, marks=pytest.mark.skip(reason=f"{kernels_unavailable()}"))]
)


def _kernel_paths() -> str:
    isas = instruction_sets()
    return f"native kernels tested on: {', '.join(isas)}" if isas else f"native kernels: none ({kernels_unavailable()})"


def pytest_report_header() -> str:
    """Which code paths the kernel tests run, in the first lines of a test run (not shown with -q)..."""
    return _kernel_paths()


def pytest_terminal_summary(terminalreporter) -> None:
    """... and in the last ones, whatever the verbosity."""
    terminalreporter.write_line(_kernel_paths())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child that imports the project: PYTHONPATH gains the repository root
    (extended, not replaced, so packages found through it stay found), plus ``extra``."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, **extra}


def start_server(
    tmp_dir: Path, port: int | None = None, cwd: Path = ROOT, env: dict | None = None, **settings: str
) -> Server:
    """Start ``python -m service`` (on ``port``, or a free one) with UPSCALER_* settings; wait until /readyz is 200.

    On the CPU unless ``device`` says otherwise, on every machine: these tests specify the service as CI runs it
    (pixels equal to the CPU engine's, CPU batch sizes, a queue a burst can fill); tests/test_gpu.py covers CUDA."""
    port = port or free_port()
    env = child_env(UPSCALER_HOST="127.0.0.1", UPSCALER_PORT=str(port), UPSCALER_DEVICE="cpu", **(env or {}))
    env.update({f"UPSCALER_{k.upper()}": str(v) for k, v in settings.items()})
    log_path = tmp_dir / f"server-{port}.log"
    with log_path.open("w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Server(url, proc, log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready after 60 s:\n{log_path.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


@contextmanager
def serving(tmp_dir: Path, **settings) -> Iterator[tuple[Server, httpx.Client]]:
    """A started server and an HTTP client for it; both closed on exit."""
    srv = start_server(tmp_dir, **settings)
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            yield srv, c
    finally:
        stop_server(srv)


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Iterator[tuple[Server, httpx.Client]]:
    with serving(tmp_path_factory.mktemp("server"), tile=64, max_batch=8) as pair:
        yield pair


@pytest.fixture(scope="session")
def server(served) -> Server:
    return served[0]


@pytest.fixture(scope="session")
def client(served) -> httpx.Client:
    return served[1]


def smooth_image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 image: smooth colour fields plus a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = [np.sin(6 * xx + 3 * c) * np.cos(5 * yy - c) for c in range(channels)]
    img = 0.5 + 0.35 * np.stack(base, axis=-1) + 0.05 * rng.standard_normal((h, w, channels))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk, written independently of the service's encoder: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_image(im: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def assert_same_pixels(got: np.ndarray, reference: np.ndarray, float_tolerance: float = 1e-5) -> None:
    """``got`` (uint8) equals the float ``reference`` rounded to 8 bits.

    Inference with different tile or batch shapes sums in a different order, so floats agree to ~1e-6,
    not bit for bit; a pixel may round the other way only when the reference lies within
    ``float_tolerance`` of a rounding boundary. Everywhere else the bytes must be identical.
    """
    from service.runtime.engine import to_pixels

    expected = to_pixels(reference, np.uint8)
    differs = got != expected
    scaled = np.clip(reference, 0, 1) * 255 + 0.5
    near_boundary = np.abs(scaled - np.round(scaled)) < float_tolerance * 255
    assert not (differs & ~near_boundary).any(), f"{int((differs & ~near_boundary).sum())} pixels differ"
    assert np.abs(got.astype(int) - expected).max(initial=0) <= 1
