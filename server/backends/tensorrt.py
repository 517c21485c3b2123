"""TensorRT backend: a thin wrapper over ``export.trt.TensorRTRunner`` after the engine sidecar check.

``export.trt`` is the only module that imports ``tensorrt``; it is imported here lazily, so the server
runs without TensorRT installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.backends.base import BackendError


class TensorRTBackend:
    """A serialized TensorRT engine (``.plan``) with its JSON sidecar (``.plan.json``)."""

    name = "tensorrt"
    provider = "TensorRT"

    def __init__(self, path: Path, *, max_batch_size: int, max_side: int, min_side: int) -> None:
        if not path.is_file():
            raise BackendError(f"engine file not found: {path}")
        from export import sidecar

        try:
            info = sidecar.read_sidecar(path)
        except sidecar.SidecarError as exc:
            raise BackendError(str(exc)) from None
        problems = sidecar.compatibility_problems(info)
        profile = info.profile
        if not profile.covers(max_batch_size, max_side, max_side) or not profile.covers(
            1, min_side, min_side
        ):
            problems.append(
                f"its profile (batch {profile.batches}, sides {profile.sides}) does not cover batch "
                f"1..{max_batch_size} and sides {min_side}..{max_side}; lower max_batch_size / max_side "
                "or rebuild the engine"
            )
        if problems:
            raise BackendError(f"engine {path.name} cannot run here: " + "; ".join(problems))
        from export.trt import TensorRTRunner

        self.metadata = info.metadata
        self.precision = info.precision
        self._runner = TensorRTRunner(path)

    def run(self, images: np.ndarray) -> np.ndarray:
        """Labels for a uint8 NHWC batch (only the label map is copied back to the host)."""
        return self._runner.run(images)

    def close(self) -> None:
        """Free the engine, its context and device buffers."""
        self._runner.close()
