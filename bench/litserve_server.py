"""The LitServe peer: the shipped model served with LitServe the way its documentation shows, kept here only to be
measured against (``python -m bench.serving`` runs it beside the service; ``pip install -e .[bench]``).

decode_request reads the multipart upload with Pillow, predict runs the whole image through one ONNX Runtime call
on the shipped ``fast_x2.onnx`` (unmodified), encode_response writes a PNG with Pillow's defaults. One inference
worker per core, each with one ONNX Runtime thread, so the workers share the cores as the service's engine threads
do. Run: ``python -m bench.litserve_server --port 8002``; it answers ``POST /v1/upscale`` with a ``file`` field.
"""

from __future__ import annotations

import argparse
import io
import os

import litserve as ls
import numpy as np
import onnxruntime as ort
from fastapi import Response
from PIL import Image

from bench.machine import MODELS

MODEL = MODELS / "fast_x2.onnx"


class UpscaleAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
        self.context = int(self.session.get_modelmeta().custom_metadata_map["context"])

    def decode_request(self, request) -> np.ndarray:
        data = request["file"].file.read()
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255

    def predict(self, image: np.ndarray) -> np.ndarray:
        c = self.context
        x = np.pad(image, ((c, c), (c, c), (0, 0)), mode="symmetric").transpose(2, 0, 1)[None]
        return self.session.run(None, {"lr": np.ascontiguousarray(x)})[0][0].transpose(1, 2, 0)

    def encode_response(self, output: np.ndarray) -> Response:
        buf = io.BytesIO()
        Image.fromarray((np.clip(output, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, "PNG")
        return Response(content=buf.getvalue(), media_type="image/png")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="inference workers (one ONNX Runtime thread)")
    args = p.parse_args()
    server = ls.LitServer(
        UpscaleAPI(api_path="/v1/upscale"),
        accelerator="cpu",
        workers_per_device=args.workers,
        timeout=120,
        healthcheck_path="/readyz",  # where bench.serving waits for its servers
    )
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
