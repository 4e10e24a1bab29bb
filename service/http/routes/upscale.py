"""POST /v1/upscale: one image in, the upscaled image out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.errors import NotReady
from service.http.dependencies import ServiceState, State
from service.http.schemas import ErrorResponse
from service.http.uploads import read_upload
from service.imageio.encoding import MEDIA_TYPES
from service.model_choice import check_requested
from service.output_size import SizeRequest
from service.pipeline import UpscaleResult

__all__ = ["router"]

router = APIRouter()

ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 408, 413, 415, 422, 500, 503, 504)}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPSCALED = {
    "description": "the upscaled image, in the format asked for (default: the input's where it can be written)",
    "content": {media_type: _BINARY for media_type in MEDIA_TYPES.values()},
    "headers": {
        "Content-Disposition": {
            "description": "inline, with a filename: the input's stem, _x<scale> (or _<width>x<height> for a size "
            "the model's scale does not give), the format's extension",
            "schema": {"type": "string"},
        },
        "X-Model-Scale": {"description": "the scale the model ran at: 2, 3 or 4", "schema": {"type": "integer"}},
        "X-Output-Size": {"description": "the result's size, <width>x<height>", "schema": {"type": "string"}},
        "Server-Timing": {"description": "decode, queue, infer and encode, in ms", "schema": {"type": "string"}},
        "X-Model": {"description": "the model that ran, <name>_x<scale>", "schema": {"type": "string"}},
        "X-Model-Reason": {
            "description": "why that model: named in the request, or what auto saw (e.g. the JPEG quality)",
            "schema": {"type": "string"},
        },
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
            "image/heic": {"schema": {"type": "string", "format": "binary"}},
            "image/avif": {"schema": {"type": "string", "format": "binary"}},
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


@router.post(
    "/v1/upscale",
    response_class=Response,
    openapi_extra=_IMAGE_BODY,
    responses={200: _UPSCALED, **ERRORS},
)
async def upscale(
    request: Request,
    state: State,
    scale: Annotated[
        float | None,
        Query(
            gt=1,
            le=4,
            description="upscaling factor in (1, 4] (default 2 when no width or height is given); 2, 3 and 4 are the "
            "models' own, others run the next larger model and are resampled",
        ),
    ] = None,
    width: Annotated[
        int | None, Query(ge=1, le=65535, description="the result's width; alone, the height follows the aspect ratio")
    ] = None,
    height: Annotated[
        int | None, Query(ge=1, le=65535, description="the result's height; alone, the width follows the aspect ratio")
    ] = None,
    fit: Annotated[
        Literal["contain", "cover", "fill"],
        Query(
            description="with width and height: contain keeps the aspect ratio within both, cover keeps it and crops "
            "the overflow evenly, fill stretches to both"
        ),
    ] = "contain",
    model: Annotated[
        str | None,
        Query(max_length=64, description="a model's name, or auto: the one made for the input (default from settings)"),
    ] = None,
    format: Annotated[
        Literal["png", "jpeg", "webp", "avif"] | None,
        Query(description="default: the input's where it can be written (a HEIC's: jpeg), else png"),
    ] = None,
    quality: Annotated[int | None, Query(ge=1, le=100, description="JPEG/WebP/AVIF quality")] = None,
    effort: Annotated[
        int | None,
        Query(ge=0, le=6, description="WebP encoder effort, libwebp's method 0-6 (default from settings)"),
    ] = None,
) -> Response:
    """Upscale one image: the raw bytes as the body (any image/* type) or a multipart field `image`."""
    if not (state.ready or state.draining):  # while draining, keep serving what load balancers still send
        raise NotReady("the service is starting or shutting down; retry shortly")
    model = model or state.settings.default_model
    size = SizeRequest(scale=scale, width=width, height=height, fit=fit)
    check_requested(state.engine.specs, model, size.integer_scale, state.settings.clean_model)
    disconnected = _DisconnectWatch(request)
    try:
        result = await state.pipeline.run(
            lambda: read_upload(request, state.settings.max_body_bytes, state.settings.body_timeout_s),
            disconnected,
            model=model,
            size=size,
            fmt=format,
            quality=quality,
            effort=effort,
        )
    finally:
        disconnected.close()
    _observe(state, request, result)
    stem = Path(result.filename).stem if result.filename else "image"
    extension = "jpg" if result.format == "jpeg" else result.format
    plan, (w, h) = result.plan, result.input_size
    suffix = f"x{plan.model_scale}" if not plan.needs_resampling(w, h) else f"{plan.width}x{plan.height}"
    return Response(
        result.body,
        media_type=MEDIA_TYPES[result.format],
        headers={
            "Content-Disposition": f'inline; filename="{stem}_{suffix}.{extension}"',
            "X-Model-Scale": str(plan.model_scale),
            "X-Output-Size": f"{plan.width}x{plan.height}",
            "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in result.timings.items()),
            "X-Model": str(result.model.key),  # the model that ran
            "X-Model-Reason": result.model.reason,
        },
    )


def _observe(state: ServiceState, request: Request, result: UpscaleResult) -> None:
    for stage, seconds in result.timings.items():
        state.metrics.stage.labels(stage).observe(seconds)
    state.metrics.output_pixels.inc(result.output_size[0] * result.output_size[1])
    request.state.log = {
        "model": str(result.model.key),
        "in": "{}x{}".format(*result.input_size),
        "out": "{}x{}".format(*result.output_size),
        "format": result.format,
        **{f"{k}_ms": round(v * 1000, 1) for k, v in result.timings.items()},
    }


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
