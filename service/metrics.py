"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process).

Modelled on Triton's set: requests by status, latency split by stage,
batch sizes, queue depth, in-flight requests and model executions.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("upscaler_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.latency = Histogram(
            "upscaler_request_duration_seconds", "Whole request latency", ["path"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.stage = Histogram(
            "upscaler_stage_duration_seconds",
            "Upscale latency by stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "upscaler_batch_size",
            "Tiles per model execution",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.executions = Counter("upscaler_model_executions", "Model executions (batches run)", ["model"], registry=r)
        self.execution_seconds = Counter(
            "upscaler_model_execution_seconds", "Seconds inside the model", ["model"], registry=r
        )
        self.tiles = Counter("upscaler_tiles", "Tiles run through the model", ["model"], registry=r)
        self.output_pixels = Counter("upscaler_output_pixels", "Pixels of upscaled images returned", registry=r)
        self.queue_tiles = Gauge("upscaler_queue_tiles", "Tiles waiting for a batch", registry=r)
        self.inflight = Gauge("upscaler_inflight_requests", "Requests being handled", registry=r)

    def observe_batch(self, key: tuple[str, int], size: int, seconds: float) -> None:
        model = f"{key[0]}_x{key[1]}"
        self.batch_size.labels(model).observe(size)
        self.executions.labels(model).inc()
        self.execution_seconds.labels(model).inc(seconds)
        self.tiles.labels(model).inc(size)
