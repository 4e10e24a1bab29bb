"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process).

Modelled on Triton's set: requests by status, latency split by stage,
batch sizes, queue depth, in-flight requests and model executions.

Under the supervisor (several server processes, ``service.http.supervisor``)
prometheus-client's multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR``):
every process writes its values to files there, and ``render`` in any of them
adds up all of them, gauges summed over the live processes.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, processes: int = 1) -> None:
        """``processes``: the server processes configured (``UPSCALER_PROCESSES`` as resolved at start)."""
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
        live = {"multiprocess_mode": "livesum"}  # only read in multiprocess mode
        self.queue_tiles = Gauge("upscaler_queue_tiles", "Tiles waiting for a batch", registry=r, **live)
        self.inflight = Gauge("upscaler_inflight_requests", "Requests being handled", registry=r, **live)
        self.processes_ready = Gauge(
            "upscaler_processes_ready", "Server processes warmed up and not draining", registry=r, **live
        )
        configured = Gauge("upscaler_processes", "Server processes configured", registry=r, multiprocess_mode="max")
        configured.set(processes)

    def render(self) -> bytes:
        """The text exposition format: this app's registry, or with several processes all of theirs."""
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=shared)
        return generate_latest(registry)

    def observe_batch(self, key: tuple[str, int], size: int, seconds: float) -> None:
        model = f"{key[0]}_x{key[1]}"
        self.batch_size.labels(model).observe(size)
        self.executions.labels(model).inc()
        self.execution_seconds.labels(model).inc(seconds)
        self.tiles.labels(model).inc(size)
