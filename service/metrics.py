"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class Metrics:
    """The service's metrics. Model state (queue depth, readiness, info) is collected from the registry on scrape."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter(
            "detect_http_requests",
            "HTTP requests answered, by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "detect_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template and method",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "detect_http_requests_in_flight", "HTTP requests being handled now", registry=self.registry
        )
        self.batch_size = Histogram(
            "detect_batch_size",
            "Images in one model run (micro-batch), by model",
            ["model"],
            buckets=tuple(size for size in _BATCH_BUCKETS if size < max_batch) + (max_batch,),
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "detect_inference_seconds",
            "Duration of one model run (a whole micro-batch), by model",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "detect_images", "Images run through a model, by model", ["model"], registry=self.registry
        )
        self.rejected = Counter(
            "detect_rejected_requests",
            "Requests that got no result, by model and reason (queue_full: 503, timeout: 504)",
            ["model", "reason"],
            registry=self.registry,
        )
        self.loads = Counter(
            "detect_model_loads",
            "Model loads at startup and reloads, by model and result (ok, failed)",
            ["model", "result"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
