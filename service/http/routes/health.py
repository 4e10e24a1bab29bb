"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.errors import NotReady
from service.http.dependencies import State
from service.http.schemas import ErrorResponse, HealthResponse

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is alive and its event loop answers."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
async def readyz(state: State) -> HealthResponse:
    """Models loaded and warmed up; 503 while starting and while draining."""
    if not state.ready:
        raise NotReady("draining" if state.draining else "models are loading")
    return HealthResponse(status="ready")


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    """Prometheus metrics."""
    if state.batcher:
        state.metrics.queue_tiles.set(state.batcher.queued_tiles)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
