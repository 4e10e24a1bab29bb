"""The HTTP layer: app factory, lifespan, routes, errors, auth and request logging.

Data flows one way: HTTP -> decode (codecs) -> batcher/engine -> encode -> HTTP.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batcher import Batcher
from service.codecs import MEDIA_TYPES, guard_pixels
from service.decoder_pool import DecoderPool
from service.engine import Engine, available_cores
from service.errors import BadParameter, NotReady, Unauthorized, UpscalerError
from service.libc import name_os_thread
from service.metrics import Metrics
from service.pipeline import Pipeline, UpscaleResult
from service.schemas import ErrorResponse, HealthResponse, ModelInfo, ModelsResponse
from service.settings import Settings, default_codec_threads, default_max_batch
from service.uploads import read_upload

__all__ = ["create_app"]

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

STATIC_DIR = Path(__file__).resolve().parent / "static"

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 408, 413, 415, 422, 500, 503, 504)}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPSCALED = {
    "description": "the upscaled image, in the format asked for (default: the input's where it can be written)",
    "content": {media_type: _BINARY for media_type in MEDIA_TYPES.values()},
    "headers": {
        "Content-Disposition": {
            "description": "inline, with a filename: the input's stem, _x<scale>, the format's extension",
            "schema": {"type": "string"},
        },
        "Server-Timing": {"description": "decode, queue, infer and encode, in ms", "schema": {"type": "string"}},
        "X-Model": {"description": "the model that ran, <variant>_x<scale>", "schema": {"type": "string"}},
        "X-Request-ID": {"description": "the request's id, as sent or made up", "schema": {"type": "string"}},
    },
}
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


@dataclass
class ServiceState:
    """What the lifespan builds and the handlers use."""

    settings: Settings
    metrics: Metrics
    engine: Engine | None = None
    batcher: Batcher | None = None
    codec_pool: ThreadPoolExecutor | None = None
    decoders: DecoderPool | None = None
    pipeline: Pipeline | None = None
    max_batch: int = 0  # UPSCALER_MAX_BATCH, or the default for the device in use
    ready: bool = False
    draining: bool = False
    started: float = field(default_factory=time.monotonic)
    on_ready: Callable[[], None] | None = None  # told once the models are warmed up (the supervisor listens)

    def set_ready(self) -> None:
        """Warmed up: ``/readyz`` answers 200, unless a stop signal came while the models were loading."""
        if self.draining:
            return
        if self.on_ready:
            self.on_ready()
        self.ready = True
        self.metrics.processes_ready.set(1)

    def set_draining(self) -> None:
        """Not ready any more (``/readyz`` answers 503), though requests that still come are served."""
        self.ready, self.draining = False, True
        self.metrics.processes_ready.set(0)


async def get_state(request: Request) -> ServiceState:
    # async: FastAPI runs a plain-def dependency in a worker thread, a hand-off per request for an attribute read
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


def _error_response(
    status: int, code: str, message: str, retry_after: int | None = None, close: bool = False
) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _build_engine(settings: Settings) -> Engine:
    return Engine(
        settings.model_dir,
        tile=settings.tile,
        threads=settings.threads,
        workers=settings.engine_workers,
        prefer_gpu=settings.device != "cpu",
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
        state.engine = await asyncio.to_thread(_build_engine, s)
        if s.device == "cuda" and not state.engine.on_gpu:
            raise RuntimeError("UPSCALER_DEVICE=cuda but ONNX Runtime has no working CUDA provider here")
        if not any(k[0] == s.default_model for k in state.engine.specs):
            raise RuntimeError(f"UPSCALER_DEFAULT_MODEL={s.default_model!r} has no model in {s.model_dir}")
        log.info("execution provider in use: %s", state.engine.provider)
        if s.processes > 1 and not state.engine.on_gpu:
            log.warning(
                "%d server processes share this machine but run on the CPU, where one is best; "
                "set UPSCALER_PROCESSES=1 (or fix the GPU setup)",
                s.processes,
            )
        state.max_batch = s.max_batch or default_max_batch(state.engine.on_gpu, state.engine.native_only)
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


def _observe(state: ServiceState, request: Request, key: tuple[str, int], result: UpscaleResult) -> None:
    for stage, seconds in result.timings.items():
        state.metrics.stage.labels(stage).observe(seconds)
    state.metrics.output_pixels.inc(result.output_size[0] * result.output_size[1])
    request.state.log = {
        "model": f"{key[0]}_x{key[1]}",
        "in": "{}x{}".format(*result.input_size),
        "out": "{}x{}".format(*result.output_size),
        "format": result.format,
        **{f"{k}_ms": round(v * 1000, 1) for k, v in result.timings.items()},
    }


def _key_for(state: ServiceState, model: str | None, scale: int) -> tuple[str, int]:
    variant = model or state.settings.default_model
    key = (variant, scale)
    if key not in state.engine.specs:
        served = ", ".join(f"{v} x{s}" for v, s in sorted(state.engine.specs))
        raise BadParameter(f"no model {variant!r} for scale {scale}; this server has: {served}")
    return key


class _DisconnectWatch:
    """Whether the client has gone away, asked once its body has been read.

    A task waits for the next ASGI message; after the body the only one that can come is ``http.disconnect``,
    so each poll is a look at that task, not another ``receive()``.
    """

    def __init__(self, request: Request):
        self.request = request
        self.task: asyncio.Future | None = None

    async def __call__(self) -> bool:
        if self.task is None:
            self.task = asyncio.ensure_future(self.request.receive())
        if not self.task.done() or self.task.cancelled() or self.task.exception() is not None:
            return False
        return self.task.result().get("type") == "http.disconnect"

    def close(self) -> None:
        if self.task is None:
            return
        if not self.task.done():
            self.task.cancel()
        elif not self.task.cancelled():
            self.task.exception()  # mark it retrieved, so asyncio does not log it


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
    _install_error_handlers(app)
    app.add_middleware(_ObserveRequests, state=state)

    @app.post(
        "/v1/upscale",
        response_class=Response,
        openapi_extra=_IMAGE_BODY,
        responses={200: _UPSCALED, **_ERRORS},
    )
    async def upscale(
        request: Request,
        state: State,
        scale: Annotated[int, Query(ge=2, le=4, description="upscaling factor: 2, 3 or 4")] = 2,
        model: Annotated[str | None, Query(max_length=64, description="model variant (default from settings)")] = None,
        format: Annotated[Literal["png", "jpeg", "webp"] | None, Query(description="default: the input's")] = None,
        quality: Annotated[int | None, Query(ge=1, le=100, description="JPEG/WebP quality")] = None,
        effort: Annotated[
            int | None,
            Query(ge=0, le=6, description="WebP encoder effort, libwebp's method 0-6 (default from settings)"),
        ] = None,
    ) -> Response:
        """Upscale one image: the raw bytes as the body (any image/* type) or a multipart field `image`."""
        if not (state.ready or state.draining):  # while draining, keep serving what load balancers still send
            raise NotReady("the service is starting or shutting down; retry shortly")
        key = _key_for(state, model, scale)
        disconnected = _DisconnectWatch(request)
        try:
            result = await state.pipeline.run(
                lambda: read_upload(request, state.settings.max_body_bytes, state.settings.body_timeout_s),
                disconnected,
                key=key,
                fmt=format,
                quality=quality,
                effort=effort,
            )
        finally:
            disconnected.close()
        _observe(state, request, key, result)
        stem = Path(result.filename).stem if result.filename else "image"
        extension = "jpg" if result.format == "jpeg" else result.format
        return Response(
            result.body,
            media_type=MEDIA_TYPES[result.format],
            headers={
                "Content-Disposition": f'inline; filename="{stem}_x{scale}.{extension}"',
                "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in result.timings.items()),
                "X-Model": f"{key[0]}_x{key[1]}",  # the model that ran
            },
        )

    @app.get("/v1/models", response_model=ModelsResponse)
    async def models(state: State) -> ModelsResponse:
        """The variants and scales served, their model-card facts and the execution provider in use."""
        if state.engine is None:
            raise NotReady("models are still loading")
        eng = state.engine
        infos = [
            ModelInfo(
                variant=v,
                scale=sc,
                context=spec.context,
                parameters=spec.card.get("parameters"),
                macs_per_input_pixel=spec.card.get("macs_per_input_pixel"),
                trained=spec.card.get("trained", False),
                set5=spec.card.get("set5"),
                precision="fp16" if eng.fp16 else "fp32",
                kernels=eng.kernels((v, sc)),
                instruction_set=eng.instruction_set((v, sc)),
            )
            for (v, sc), spec in sorted(eng.specs.items())
        ]
        return ModelsResponse(
            default_model=state.settings.default_model,
            provider=eng.provider,
            tile=eng.tile,
            max_batch=state.max_batch,
            models=infos,
        )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The page to try the upscaler in a browser (service/static)."""
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        """The process is alive and its event loop answers."""
        return HealthResponse(status="ok")

    @app.get("/readyz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
    async def readyz(state: State) -> HealthResponse:
        """Models loaded and warmed up; 503 while starting and while draining."""
        if not state.ready:
            raise NotReady("draining" if state.draining else "models are loading")
        return HealthResponse(status="ready")

    @app.get("/metrics", response_class=Response)
    async def metrics(state: State) -> Response:
        """Prometheus metrics."""
        if state.batcher:
            state.metrics.queue_tiles.set(state.batcher.queued_tiles)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _openapi(app: FastAPI, state: ServiceState) -> dict:
    """FastAPI's schema, with the variants served as the ``model`` parameter's enum once the models are loaded (a
    generated client then offers them)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    if state.engine is None:
        return schema  # not kept: asked again once the models are loaded
    variants = sorted({variant for variant, _ in state.engine.specs})
    for parameter in schema["paths"]["/v1/upscale"]["post"]["parameters"]:
        if parameter["name"] == "model":
            parameter["schema"] = {"anyOf": [{"type": "string", "enum": variants}, {"type": "null"}]}
    app.openapi_schema = schema
    return schema


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UpscalerError)
    async def _service_error(request: Request, exc: UpscalerError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.message, exc.retry_after, exc.close_connection)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error_response(422, "validation_error", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail))


def _authorized(settings: Settings, request: Request) -> bool:
    path = request.url.path
    if not settings.api_keys or any(
        path == p or (p != "/" and path.startswith(p + "/")) for p in settings.public_paths
    ):
        return True
    given = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    # Compare against every key, in constant time, so timing reveals neither a key nor which one matched.
    matches = [hmac.compare_digest(given.encode(), key.encode()) for key in settings.api_keys]
    return any(matches)


class _ObserveRequests:
    """Around every HTTP request: its ID, the API-key check, metrics, the access log, and a JSON 500 for an error
    nothing else caught.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``) ran each request
    in a task group with memory streams, 1.5-2 ms of event-loop CPU a request on this project's CPU. The
    latency it records (metrics and the access log's ``ms``) runs until the whole body has been handed to the
    server, so a slow reader shows as a slower request.
    """

    def __init__(self, app: ASGIApp, state: ServiceState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        request_id = request.headers.get("x-request-id", "")[:128] or uuid.uuid4().hex
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        started = time.perf_counter()
        self.state.metrics.inflight.inc()
        try:
            if _authorized(self.state.settings, request):
                await self.app(scope, receive, send_with_id)
            else:
                message = "missing or wrong API key; send it as X-API-Key"
                await _error_response(401, Unauthorized.code, message)(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status or 499  # the server is stopping under it; nobody reads an answer
            raise
        except Exception:
            if status:  # the answer has begun: too late for a 500; uvicorn logs it
                raise
            log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path, request_id)
            await _error_response(500, "internal", "internal error; it has been logged")(scope, receive, send_with_id)
        finally:
            self.state.metrics.inflight.dec()
            self._record(request, request_id, status, time.perf_counter() - started)

    def _record(self, request: Request, request_id: str, status: int, seconds: float) -> None:
        metrics = self.state.metrics
        route = request.scope.get("route")
        path = route.path if route else "unmatched"
        metrics.requests.labels(path, str(status)).inc()
        metrics.latency.labels(path).observe(seconds)
        if path in ("/healthz", "/readyz", "/metrics"):
            return
        fields = {
            "request_id": request_id,
            "method": request.method,
            "path": request.url.path,
            "status": status,
            "ms": round(seconds * 1000, 1),
            "scale": request.query_params.get("scale"),
            **request.scope.get("state", {}).get("log", {}),
        }
        access_log.info("request", extra=fields)
