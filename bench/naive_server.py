"""The naive baseline: a minimal FastAPI endpoint, kept here only to be measured against.

The whole image goes through one ONNX Runtime call (no tiling, no batching
across requests, inference on the event loop) and the result is encoded with
Pillow's defaults. It runs the model file the service runs on the same device
(on a CPU the _cpu graph, ``export.cpu``), so the ratio between the two measures
the serving design alone. Run: ``python -m bench.naive_server --port 8001``.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response
from PIL import Image

from bench.machine import MODELS

MODEL = {"cuda": MODELS / "fast_x2.onnx", "cpu": MODELS / "fast_x2_cpu.onnx"}


def create_app(device: str = "cpu") -> FastAPI:
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(MODEL[device]), providers=providers)
    context = int(session.get_modelmeta().custom_metadata_map["context"])
    app = FastAPI()

    @app.post("/v1/upscale")
    async def upscale(request: Request) -> Response:
        img = np.asarray(Image.open(io.BytesIO(await request.body())).convert("RGB"), np.float32) / 255
        x = np.pad(img, ((context, context), (context, context), (0, 0)), mode="symmetric").transpose(2, 0, 1)[None]
        y = session.run(None, {"lr": np.ascontiguousarray(x)})[0][0].transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray((np.clip(y, 0, 1) * 255).round().astype(np.uint8)).save(buf, "PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args()
    uvicorn.run(create_app(args.device), host="127.0.0.1", port=args.port, log_level="warning")
