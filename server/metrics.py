"""Prometheus metrics of the service, in a registry owned by one app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

FAILURE_REASONS: tuple[str, ...] = ("rejected", "expired", "cancelled", "bad_input", "backend")
HTTP_ERROR_REASONS: tuple[str, ...] = (
    "malformed", "framing", "head_too_large", "unsupported_encoding", "head_timeout", "connection_limit",
    "send_timeout",
)  # fmt: skip
"""What the HTTP layer (server/protocol.py) answered or cut off itself, before or around the app."""
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)


class Metrics:
    """Request, queue, inference, decode and encode times; batch sizes; queue depth; failures by reason;
    open connections and the HTTP layer's own refusals."""

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
            "fcn_requests",
            "Answered /segment requests by status code (refusals included)",
            ["status"],
            registry=reg,
        )
        self.failures = Counter(
            "fcn_failures", "Failed /segment requests by reason", ["reason"], registry=reg
        )
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        self.images = Counter("fcn_inference_images", "Images that reached the model", registry=reg)
        self.connections = Gauge("fcn_connections", "Open HTTP connections", registry=reg)
        self.http_errors = Counter(
            "fcn_http_errors",
            "Requests and connections the HTTP layer refused or cut off itself, by reason",
            ["reason"],
            registry=reg,
        )
        for reason in HTTP_ERROR_REASONS:
            self.http_errors.labels(reason)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
