"""TensorRT backend: a thin wrapper over ``export.trt.TensorRTRunner`` after the engine sidecar check.

``export.trt`` is the only module that imports ``tensorrt``; it is imported here lazily, so the server
runs without TensorRT installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.backends.base import BackendError


class TensorRTBackend:
    """A serialized TensorRT engine (``.plan``) with its JSON sidecar."""

    name = "tensorrt"
    provider = "TensorrtExecutionContext"

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise BackendError(f"engine file not found: {path}")
        try:
            from export import sidecar
        except ImportError as exc:
            raise BackendError(
                f"TensorRT backend unavailable: cannot import export.sidecar ({exc})"
            ) from None
        info = sidecar.read_sidecar(path)
        problems = sidecar.compatibility_problems(info)
        if problems:
            raise BackendError(f"engine {path.name} cannot run here: " + "; ".join(problems))
        try:
            from export.trt import TensorRTRunner
        except ImportError as exc:
            raise BackendError(f"TensorRT backend unavailable: {exc}") from None
        self.metadata = info.metadata
        self.precision = info.precision
        self._runner = TensorRTRunner(path)

    def run(self, images: np.ndarray) -> np.ndarray:
        """Labels for a uint8 NHWC batch (only the label map is copied back to the host)."""
        return self._runner.run(images)

    def close(self) -> None:
        """Free the engine, its context and device buffers."""
        close = getattr(self._runner, "close", None)
        if close is not None:
            close()
