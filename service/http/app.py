"""The app factory and its lifespan: the engine, batcher and codec pools are built when the server starts.

Data flows one way: HTTP (routes/) -> decode (service.imageio) -> batcher/engine (service.runtime) -> encode -> HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import onnxruntime as ort
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from service.host import available_cores, cuda_status, name_os_thread
from service.http.dependencies import ServiceState
from service.http.error_responses import install_error_handlers
from service.http.metrics import Metrics
from service.http.middleware import ObserveRequests
from service.http.routes import health, models, page, upscale
from service.imageio.decoder_pool import DecoderPool
from service.imageio.decoding import guard_pixels
from service.pipeline import Pipeline
from service.runtime.batcher import Batcher
from service.runtime.engine import Engine
from service.settings import Settings, default_codec_threads, default_max_batch

__all__ = ["create_app"]

log = logging.getLogger("service")


def _build_engine(settings: Settings, prefer_gpu: bool) -> Engine:
    return Engine(
        settings.model_dir,
        tile=settings.tile,
        threads=settings.threads,
        workers=settings.engine_workers,
        prefer_gpu=prefer_gpu,
        precision=settings.precision,
        variants=settings.variants or None,
        cores=max(1, available_cores() // max(1, settings.processes)),  # this process's share
        cpu_kernels=settings.cpu_kernels,
    )


def _lifespan(state: ServiceState):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        s = state.settings
        guard_pixels(s.max_input_pixels)
        # Asked before any session: onnxruntime-gpu on a machine without a GPU would load CUDA's libraries for
        # nothing, then run on the CPU without a word.
        gpu, why = cuda_status() if s.device != "cpu" else (False, "UPSCALER_DEVICE=cpu")
        if s.device == "cuda" and not gpu:
            raise RuntimeError(f"UPSCALER_DEVICE=cuda but CUDA cannot run here: {why}")
        state.engine = await asyncio.to_thread(_build_engine, s, gpu)
        if s.device == "cuda" and not state.engine.on_gpu:
            raise RuntimeError("UPSCALER_DEVICE=cuda but ONNX Runtime has no working CUDA provider here")
        state.device = "cuda" if state.engine.on_gpu else "cpu"
        if gpu and not state.engine.on_gpu:
            why = "ONNX Runtime could not open its CUDA provider (its log above says why)"
        state.device_reason = why
        if state.device == "cpu":
            # A warning where a GPU was expected: onnxruntime-gpu (the GPU image) on a machine without one.
            expected = s.device == "auto" and "CUDAExecutionProvider" in ort.get_available_providers()
            log.log(logging.WARNING if expected else logging.INFO, "running on the CPU: %s", why)
        needed, what = s.model_needed
        if not any(k.variant == needed for k in state.engine.specs):
            raise RuntimeError(f"{what} has no model in {s.model_dir}")
        log.info("execution provider in use: %s", state.engine.provider)
        if s.processes > 1 and not state.engine.on_gpu:
            log.warning(
                "%d server processes share this machine but run on the CPU, where one is best; "
                "set UPSCALER_PROCESSES=1 (or fix the GPU setup)",
                s.processes,
            )
        state.max_batch = s.max_batch or default_max_batch(state.engine.on_gpu, state.engine.kernels_run_every_model)
        await asyncio.to_thread(state.engine.warmup, state.max_batch)
        codec_threads = s.codec_threads or default_codec_threads(state.engine.on_gpu, state.engine.cores)
        state.codec_pool = ThreadPoolExecutor(codec_threads, thread_name_prefix="codec", initializer=name_os_thread)
        # Twice the codec threads may decode at once, so that two uploads taking their whole time budget leave room
        # for the others; the cores are shared, and an honest decode is short.
        state.decoders = DecoderPool(
            2 * codec_threads, s.decode_budget_s, max_abandoned=codec_threads, initializer=name_os_thread
        )
        state.batcher = Batcher(
            state.engine,
            max_batch=state.max_batch,
            max_wait=s.max_wait_ms / 1000,
            max_queue_tiles=s.max_queue_tiles,
            scheduling=s.scheduling,
            on_batch=lambda *batch: _on_batch(state, *batch),
        )
        state.batcher.start()
        state.pipeline = Pipeline(state.batcher, state.decoders, state.codec_pool, s)
        state.set_ready()
        log.info("ready: batches of up to %d tiles, %d codec threads", state.max_batch, codec_threads)
        try:
            yield
        finally:
            state.set_draining()
            await state.batcher.stop()
            state.codec_pool.shutdown(wait=True)
            state.decoders.shutdown()
            log.info("stopped")

    return lifespan


def _on_batch(state: ServiceState, key: tuple[str, int], size: int, seconds: float) -> None:
    state.metrics.observe_batch(key, size, seconds)
    # Kept current here too, not only when /metrics is asked: with several processes another one may answer it.
    state.metrics.queue_tiles.set(state.batcher.queued_tiles)


def create_app(settings: Settings | None = None, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """Build the service. The engine is loaded in the lifespan, when the server starts; ``on_ready`` is called
    once it is warmed up."""
    settings = settings or Settings()
    metrics = Metrics(processes=settings.processes or 1)
    state = ServiceState(settings=settings, metrics=metrics, on_ready=on_ready)
    # Swagger UI and ReDoc from the package's own copies (fastapi-offline), not a CDN: /docs works air-gapped.
    app = FastAPIOffline(
        title="Upscaler",
        version="0.1.0",
        lifespan=_lifespan(state),
        description="Learned image upscaling (FSRCNN family, transposed-convolution upsampler).",
        static_url="/docs/assets",  # under /docs, so served without a key like the page itself
    )
    app.state.service = state
    app.openapi = lambda: _openapi(app, state)
    install_error_handlers(app)
    app.add_middleware(ObserveRequests, state=state)
    for routes in (upscale, models, page, health):
        app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    return app


def _openapi(app: FastAPI, state: ServiceState) -> dict:
    """FastAPI's schema, with auto and the models served as the ``model`` parameter's enum once the models are loaded (a
    generated client then offers them)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    if state.engine is None:
        return schema  # not kept: asked again once the models are loaded
    variants = ["auto", *sorted({variant for variant, _ in state.engine.specs})]
    for parameter in schema["paths"]["/v1/upscale"]["post"]["parameters"]:
        if parameter["name"] == "model":
            parameter["schema"] = {"anyOf": [{"type": "string", "enum": variants}, {"type": "null"}]}
    app.openapi_schema = schema
    return schema
