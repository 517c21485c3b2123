"""The backend protocol every inference engine implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from common.metadata import ModelMetadata


class BackendError(RuntimeError):
    """A model cannot be loaded or run; the message is one clear line for operators."""


@dataclass(frozen=True)
class Fallback:
    """One reason a backend serves instead of the one the deployment meant (the faster one)."""

    kind: str
    """``engine_build_failed`` | ``engine_unusable`` | ``no_tensorrt`` | ``cuda_unavailable``."""
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


@runtime_checkable
class Backend(Protocol):
    """Runs the deployable graph: uint8 RGB images in, uint8 class indices out."""

    name: str
    """Backend name: ``onnxruntime``, ``openvino``, ``tensorrt`` or a test double's name."""
    provider: str
    """Execution provider / device really in use, e.g. ``CPUExecutionProvider``."""
    precision: str
    """``fp32`` | ``fp16`` | ``int8``."""
    metadata: ModelMetadata
    instances: int
    """How many ``run`` calls may proceed at once, each on its own session / infer request."""
    selection: dict[str, Any]
    """How this backend and its instances were chosen (``chosen_by``: settings, device or measurement) and
    the measurements behind it; shown in ``/v1/model``."""
    fallback: tuple[Fallback, ...]
    """Why this is not the backend the deployment meant, in the order it happened (empty: it is)."""

    def run(self, images: np.ndarray) -> np.ndarray:
        """``uint8 [N, H, W, 3]`` RGB -> ``uint8 [N, H, W]`` labels. Thread-safe for ``instances`` callers."""
        ...

    def close(self) -> None:
        """Release the model's resources."""
        ...
