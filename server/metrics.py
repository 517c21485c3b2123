"""Prometheus metrics of the service, in a registry owned by one app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

FAILURE_REASONS: tuple[str, ...] = ("rejected", "expired", "cancelled", "bad_input", "backend")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)


class Metrics:
    """Request, queue, inference, decode and encode times; batch sizes; queue depth; failures by reason;
    the backend serving."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.request_seconds = Histogram(
            "fcn_request_seconds",
            "Time from request arrival to response, /segment",
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        self.queue_seconds = Histogram(
            "fcn_queue_seconds",
            "Time an image waited in the batcher queue",
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        self.inference_seconds = Histogram(
            "fcn_inference_seconds", "Backend time of one batch", registry=reg, buckets=_LATENCY_BUCKETS
        )
        self.decode_seconds = Histogram(
            "fcn_decode_seconds", "Image decode + resize + pad time", registry=reg, buckets=_LATENCY_BUCKETS
        )
        self.encode_seconds = Histogram(
            "fcn_encode_seconds",
            "Label resize + PNG/JSON encode time",
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        batch_buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_size = Histogram(
            "fcn_batch_size",
            "Images per forward pass",
            registry=reg,
            buckets=[b for b in batch_buckets if b <= max_batch_size],
        )
        self.queue_depth = Gauge("fcn_queue_depth", "Images waiting for the model", registry=reg)
        self.requests = Counter(
            "fcn_requests", "Finished /segment requests by status code", ["status"], registry=reg
        )
        self.failures = Counter(
            "fcn_failures", "Failed /segment requests by reason", ["reason"], registry=reg
        )
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        self.images = Counter("fcn_inference_images", "Images that reached the model", registry=reg)
        self.backend_info = Gauge(
            "fcn_backend_info",
            "1 for the backend serving, its execution provider really in use, and why it is a fallback "
            "(comma-separated kinds; 'none' when it is the backend the deployment meant)",
            ["backend", "provider", "fallback"],
            registry=reg,
        )

    def set_backend(self, backend: str, provider: str, fallback_kinds: list[str]) -> None:
        """Publish which backend serves (one labelled series of value 1)."""
        self.backend_info.clear()
        self.backend_info.labels(backend, provider, ",".join(fallback_kinds) or "none").set(1)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
