"""All server configuration in one pydantic-settings object: ``FCN_*`` environment variables == CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.geometry import DEFAULT_GRANULARITY, DEFAULT_MAX_BATCH, DEFAULT_MAX_SIDE
from server.imaging import DEFAULT_MAX_JPEG_SCANS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "demo" / "fcn8s-demo.onnx"
SMALL_BODY_SHARE = 8
"""1/8 of ``max_inflight_body_bytes`` is kept for bodies of at most that size (see server/upload.py)."""


class Settings(BaseSettings):
    """Server settings. Each field is the env var ``FCN_<NAME>`` and the flag ``--<name-with-dashes>``."""

    model_config = SettingsConfigDict(env_prefix="FCN_", extra="forbid", frozen=True)

    model: Path = Field(
        DEFAULT_MODEL,
        description="model file served as a one-model repository: .onnx (ONNX Runtime / OpenVINO) or .plan "
        "(TensorRT); ignored when model_repository is set",
    )
    model_repository: Path | None = Field(
        None,
        description="folder of models in Triton's layout <model>/<version>/model.onnx|model.plan; the latest "
        "version of each is served",
    )
    default_model: str | None = Field(
        None,
        description="model answering requests that name none (default: the first name in the repository)",
    )
    backend: Literal["auto", "onnxruntime", "openvino", "tensorrt"] = Field(
        "auto",
        description="auto = TensorRT if a compatible engine and a GPU exist, else ORT CUDA, else the faster "
        "of ONNX Runtime and OpenVINO on the CPU (measured at start-up)",
    )
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in containers)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")

    max_batch_size: int = Field(
        DEFAULT_MAX_BATCH,
        ge=1,
        le=256,
        description="most images in one forward pass; unless set, on CPU lowered at warm-up to the largest "
        "batch that still lowers the measured time per image",
    )
    max_delay_ms: float = Field(
        2.0, ge=0, description="longest the oldest queued image waits for batch-mates"
    )
    queue_size: int = Field(64, ge=1, description="most images waiting for the model; beyond: reject")
    queue_full_status: int = Field(429, description="status when the queue is full: 429 or 503")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 429/503")
    deadline_ms: float = Field(30000.0, gt=0, description="per-request deadline from arrival (504 after)")
    stall_timeout_s: float = Field(60.0, gt=0, description="a batch running longer makes /health/ready 503")

    max_side: int = Field(
        DEFAULT_MAX_SIDE, ge=32, le=8192, description="inference runs with the long side at most this"
    )
    bucket: int = Field(
        DEFAULT_GRANULARITY,
        ge=1,
        description="bucket granularity: padded sides s with (s + the model's input growth) % bucket == 0",
    )
    warmup: bool = Field(True, description="run every bucket shape once before reporting ready")

    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1, description="request body limit (413 beyond)")
    max_pixels: int = Field(
        40_000_000, ge=1, description="decoded image limit, from the header: pixels, and 3 bytes each (413)"
    )
    max_jpeg_scans: int = Field(
        DEFAULT_MAX_JPEG_SCANS, ge=1, description="most scans in a JPEG (each decodes the image again; 413)"
    )
    max_form_parts: int = Field(4, ge=1, description="most parts accepted in a multipart body")
    max_header_bytes: int = Field(16384, ge=1024, description="largest total size of request headers (431)")
    max_inflight_body_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1,
        description="most request-body bytes held at once (Content-Length, or max_body_bytes if chunked); "
        "beyond: queue_full_status + Retry-After before the body is read",
    )

    idle_timeout_s: float = Field(
        15.0,
        ge=1,
        description="a connection without a complete request head this long after it opened or after its "
        "last response is closed (Keep-Alive: timeout=N; clients must drop idle connections sooner)",
    )
    send_timeout_s: float = Field(
        30.0, gt=0, description="a connection whose unsent response bytes do not move for this long is cut"
    )
    max_connections: int = Field(
        256, ge=1, description="most open connections; a further one gets 503 + Retry-After and is closed"
    )

    codec_threads: int = Field(
        0, ge=0, description="threads decoding/encoding images (0 = min(4, CPU count))"
    )
    instances: int | Literal["auto"] = Field(
        "auto",
        description="model instances running batches at once, each with its own session and threads; auto = "
        "measured at start-up on CPU (one instance with every core vs one per core), 1 on a GPU",
    )
    threads_per_instance: int = Field(
        0, ge=0, description="inference threads of each instance (0 = the CPU cores divided by the instances)"
    )

    api_key: SecretStr | None = Field(None, description="if set, /segment and /v1/model need X-API-Key")
    metrics_need_key: bool = Field(False, description="also require the API key on /metrics")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated allowed CORS origins (empty = CORS off)"
    )
    docs_pages: bool = Field(
        False, description="serve /docs and /redoc (they load Swagger UI and ReDoc from a public CDN)"
    )

    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM: longest wait for in-flight requests")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["json", "text"] = Field("json", description="json = one JSON object per line")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.queue_full_status not in (429, 503):
            raise ValueError(f"queue_full_status must be 429 or 503, got {self.queue_full_status}")
        if isinstance(self.instances, int) and self.instances < 1:
            raise ValueError(f"instances must be at least 1 or auto, got {self.instances}")
        if self.bucket > self.max_side:
            raise ValueError(f"bucket ({self.bucket}) must not exceed max_side ({self.max_side})")
        budget = self.max_inflight_body_bytes
        if self.max_body_bytes > budget - budget // SMALL_BODY_SHARE:
            raise ValueError(
                f"max_inflight_body_bytes ({budget}) must hold one body of max_body_bytes "
                f"({self.max_body_bytes}) besides the 1/{SMALL_BODY_SHARE} kept for small bodies"
            )
        return self

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values, with the API key masked (for the start-up log)."""
        data = self.model_dump(mode="json")
        data["api_key"] = "***" if self.api_key else None
        return data


GROUPS: dict[str, tuple[str, ...]] = {
    "model and backend": ("model", "model_repository", "default_model", "backend"),
    "network": ("host", "port"),
    "connections": ("idle_timeout_s", "send_timeout_s", "max_connections"),
    "batching and queue": (
        "max_batch_size", "max_delay_ms", "queue_size", "queue_full_status", "retry_after_s", "deadline_ms",
        "stall_timeout_s",
    ),
    "image sizes and warm-up": ("max_side", "bucket", "warmup"),
    "request limits": (
        "max_body_bytes", "max_pixels", "max_jpeg_scans", "max_form_parts", "max_header_bytes",
        "max_inflight_body_bytes",
    ),
    "execution": ("instances", "threads_per_instance", "codec_threads"),
    "access": ("api_key", "metrics_need_key", "cors_origins", "docs_pages"),
    "shutdown and logs": ("drain_timeout_s", "log_level", "log_format"),
}  # fmt: skip
"""The settings by topic, in the order the generated configuration docs list them (a test checks every
field is in exactly one group)."""
