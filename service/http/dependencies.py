"""What the lifespan builds and the handlers use: the service's state, reached through the ``State`` dependency."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.http.metrics import Metrics
from service.imageio.decoder_pool import DecoderPool
from service.pipeline import Pipeline
from service.runtime.batcher import Batcher
from service.runtime.engine import Engine
from service.settings import Settings

__all__ = ["ServiceState", "State", "get_state"]


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
    device: str = ""  # "cuda" or "cpu", once the engine is built
    device_reason: str = ""  # why that device: the GPUs CUDA sees, or why not CUDA
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


async def get_state(request: Request) -> ServiceState:
    # async: FastAPI runs a plain-def dependency in a worker thread, a hand-off per request for an attribute read
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]
