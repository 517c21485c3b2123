"""Prometheus metrics of the service, in a registry owned by one app instance.

Everything about one model version (queue, batches, inference, stages) carries ``model`` and ``version``
labels; :meth:`Metrics.for_model` binds them, and :meth:`Metrics.forget` drops a version's series when it
is unloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

FAILURE_REASONS: tuple[str, ...] = ("rejected", "expired", "cancelled", "bad_input", "backend")
STAGES: tuple[str, ...] = ("receive", "decode", "resize", "pad", "queue", "infer", "crop", "encode")
HTTP_ERROR_REASONS: tuple[str, ...] = (
    "malformed", "framing", "head_too_large", "unsupported_encoding", "head_timeout", "connection_limit",
    "send_timeout", "linger_time", "linger_bytes",
)  # fmt: skip
"""What the HTTP layer (server/protocol.py) answered or cut off itself, before or around the app."""
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODEL_LABELS = ("model", "version")


@dataclass(frozen=True)
class _BoundStages:
    """``fcn_stage_seconds`` with the model labels filled in: ``.labels(stage)``."""

    family: Histogram
    model_labels: tuple[str, str]

    def labels(self, stage: str) -> Histogram:
        return self.family.labels(*self.model_labels, stage)


@dataclass(frozen=True)
class ModelMetrics:
    """The series of one model version (what the batcher and the request path of that model update)."""

    queue_depth: Gauge
    queue_seconds: Histogram
    inference_seconds: Histogram
    batch_size: Histogram
    images: Counter
    stages: _BoundStages
    """``fcn_stage_seconds`` with the model's labels bound; ``.labels(stage)`` gives one stage's series."""


class Metrics:
    """Request times and outcomes; per model version: queue, batches, inference, per-stage times and the
    backend serving it; open connections and the HTTP layer's own refusals."""

    def __init__(self) -> None:
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
            MODEL_LABELS,
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )
        self.inference_seconds = Histogram(
            "fcn_inference_seconds",
            "Backend time of one batch",
            MODEL_LABELS,
            registry=reg,
            buckets=_LATENCY_BUCKETS,
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
        self.batch_size = Histogram(
            "fcn_batch_size", "Images per forward pass", MODEL_LABELS, registry=reg, buckets=_BATCH_BUCKETS
        )
        self.queue_depth = Gauge(
            "fcn_queue_depth", "Images waiting for the model", MODEL_LABELS, registry=reg
        )
        self.requests = Counter(
            "fcn_requests",
            "Answered inference requests by status code (refusals included) and model version ('' before a "
            "model was chosen)",
            ["status", *MODEL_LABELS],
            registry=reg,
        )
        self.failures = Counter(
            "fcn_failures", "Failed inference requests by reason", ["reason"], registry=reg
        )
        for reason in FAILURE_REASONS:
            self.failures.labels(reason)
        self.images = Counter(
            "fcn_inference_images", "Images that reached the model", MODEL_LABELS, registry=reg
        )
        self.connections = Gauge("fcn_connections", "Open HTTP connections", registry=reg)
        self.http_errors = Counter(
            "fcn_http_errors",
            "Requests and connections the HTTP layer refused or cut off itself, by reason",
            ["reason"],
            registry=reg,
        )
        for reason in HTTP_ERROR_REASONS:
            self.http_errors.labels(reason)
        self.backend_info = Gauge(
            "fcn_backend_info",
            "1 for the backend serving each model version, its execution provider really in use, and why it "
            "is a fallback (comma-separated kinds; 'none' when it is the backend the deployment meant)",
            [*MODEL_LABELS, "backend", "provider", "fallback"],
            registry=reg,
        )
        self._backend_labels: dict[tuple[str, str], tuple[str, ...]] = {}
        self.stage_seconds = Histogram(
            "fcn_stage_seconds",
            "Per-request time of each request stage: thread CPU seconds of decode, resize, pad, crop, encode "
            "(codec threads); wall seconds of receive (body upload), queue and infer (the request's batch)",
            [*MODEL_LABELS, "stage"],
            registry=reg,
            buckets=_LATENCY_BUCKETS,
        )

    def for_model(self, name: str, version: int) -> ModelMetrics:
        """The series of model ``name`` version ``version`` (created at zero)."""
        labels = (name, str(version))
        stages = self.stage_seconds
        for stage in STAGES:
            stages.labels(*labels, stage)
        return ModelMetrics(
            queue_depth=self.queue_depth.labels(*labels),
            queue_seconds=self.queue_seconds.labels(*labels),
            inference_seconds=self.inference_seconds.labels(*labels),
            batch_size=self.batch_size.labels(*labels),
            images=self.images.labels(*labels),
            stages=_BoundStages(stages, labels),
        )

    def forget(self, name: str, version: int) -> None:
        """Drop the series of an unloaded model version."""
        labels = (name, str(version))
        for metric in (
            self.queue_depth,
            self.queue_seconds,
            self.inference_seconds,
            self.batch_size,
            self.images,
        ):
            metric.remove(*labels)
        for stage in STAGES:
            self.stage_seconds.remove(*labels, stage)
        if labels in self._backend_labels:
            self.backend_info.remove(*self._backend_labels.pop(labels))

    def set_backend(
        self, name: str, version: int, backend: str, provider: str, fallback_kinds: list[str]
    ) -> None:
        """Publish which backend serves model ``name`` version ``version`` (one series of value 1)."""
        model = (name, str(version))
        if model in self._backend_labels:
            self.backend_info.remove(*self._backend_labels[model])
        labels = (*model, backend, provider, ",".join(fallback_kinds) or "none")
        self._backend_labels[model] = labels
        self.backend_info.labels(*labels).set(1)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
