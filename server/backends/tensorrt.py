"""TensorRT backend: a thin wrapper over ``engine.runtime.TensorRTRunner`` after the engine sidecar check.

``engine.runtime`` is the only module that imports ``tensorrt``; it is imported here lazily, so the
server runs without TensorRT installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.geometry import ServingGeometry
from server.backends.base import BackendError


class TensorRTBackend:
    """A serialized TensorRT engine (``.plan``) with its JSON sidecar (``.plan.json``)."""

    name = "tensorrt"
    provider = "TensorRT"
    instances = 1

    def __init__(self, path: Path, *, max_batch_size: int, max_side: int, granularity: int) -> None:
        if not path.is_file():
            raise BackendError(f"engine file not found: {path}")
        from engine.runtime import TensorRTRunner, compatibility_problems
        from engine.spec import SidecarError, read_sidecar

        try:
            info = read_sidecar(path)
        except SidecarError as exc:
            raise BackendError(str(exc)) from None
        problems = compatibility_problems(info)
        geometry = ServingGeometry(info.metadata.geometry, max_side, granularity)
        needed, profile = geometry.engine_profile(max_batch_size), info.profile
        if not profile.includes(needed):
            problems.append(
                f"its profile (batch {profile.batches}, sides {profile.sides}) does not cover batch "
                f"1..{max_batch_size} and the bucket sides {needed.min_side}..{needed.max_side}; lower "
                "max_batch_size / max_side or rebuild the engine for these settings"
            )
        if problems:
            raise BackendError(f"engine {path.name} cannot run here: " + "; ".join(problems))

        self.metadata = info.metadata
        self.precision = info.precision
        self._runner = TensorRTRunner(path)
        self.selection: dict[str, Any] = {"chosen_by": "device", "profile": list(profile.shapes())}

    def run(self, images: np.ndarray) -> np.ndarray:
        """Labels for a uint8 NHWC batch (only the label map is copied back to the host)."""
        return self._runner.run(images)

    def close(self) -> None:
        """Free the engine, its context and device buffers."""
        self._runner.close()
