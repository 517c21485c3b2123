"""TensorRT backend: a thin wrapper over ``engine.runtime.TensorRTRunner`` after the engine sidecar check.

``engine.runtime`` is the only module that imports ``tensorrt``; it is imported here lazily, so the
server runs without TensorRT installed. The sidecar is read and the plan deserialized under the engine
cache's shared lock (``engine.cache``), so a replica rebuilding the engine in a shared cache is never
read half-way. Every failure, a CUDA or TensorRT error included, is a :class:`BackendError` of one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.geometry import ServingGeometry
from server.backends.base import BackendError, Fallback

LOCK_WAIT_S = 120.0
"""How long the server waits for an engine build holding the cache lock before it falls back."""


class TensorRTBackend:
    """A serialized TensorRT engine (``.plan``) with its JSON sidecar (``.plan.json``)."""

    name = "tensorrt"
    provider = "TensorRT"
    instances = 1
    fallback: tuple[Fallback, ...] = ()

    def __init__(self, path: Path, *, max_batch_size: int, max_side: int, granularity: int) -> None:
        from engine.cache import CacheLocked, cache_lock

        if not path.is_file():
            raise BackendError(f"engine file not found: {path}")
        try:
            with cache_lock(path, shared=True, timeout_s=LOCK_WAIT_S):
                self._load(path, max_batch_size, max_side, granularity)
        except CacheLocked as exc:
            raise BackendError(f"engine {path.name}: {exc}") from None

    def _load(self, path: Path, max_batch_size: int, max_side: int, granularity: int) -> None:
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
        try:
            self._runner = TensorRTRunner(path)
        except (RuntimeError, OSError) as exc:  # a plan TensorRT cannot read, a CUDA error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"engine {path.name} cannot be loaded: {first[:300]}") from None
        self.selection: dict[str, Any] = {"chosen_by": "device", "profile": list(profile.shapes())}

    def run(self, images: np.ndarray) -> np.ndarray:
        """Labels for a uint8 NHWC batch (only the label map is copied back to the host)."""
        return self._runner.run(images)

    def close(self) -> None:
        """Free the engine, its context and device buffers."""
        self._runner.close()
