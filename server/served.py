"""A model being served: its backend, its serving geometry, its batcher and its warm-up."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from common.classes import Color
from common.geometry import ServingGeometry
from common.metadata import ModelMetadata
from server.backends.base import Backend
from server.batcher import Batcher
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("server")


@dataclass
class ServedModel:
    """Everything needed to turn a padded image into labels with one model."""

    backend: Backend
    geometry: ServingGeometry
    batcher: Batcher
    pad_colour: Color

    @classmethod
    def start(cls, backend: Backend, settings: Settings, metrics: Metrics) -> ServedModel:
        """Serve ``backend`` with the geometry its metadata and ``settings`` imply; starts the batcher."""
        meta = backend.metadata
        batcher = Batcher(
            backend.run,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_delay_ms / 1000,
            queue_size=settings.queue_size,
            metrics=metrics,
        )
        batcher.start()
        return cls(
            backend=backend,
            geometry=ServingGeometry(meta.geometry, settings.max_side, settings.bucket),
            batcher=batcher,
            pad_colour=meta.normalization.neutral_rgb(),
        )

    @property
    def metadata(self) -> ModelMetadata:
        return self.backend.metadata

    def warmup_shapes(self, max_batch_size: int) -> list[tuple[int, int, int]]:
        """Every bucket at batch 1, and the largest bucket at ``max_batch_size``."""
        buckets = self.geometry.buckets()
        return [(1, h, w) for h, w in buckets] + [(max_batch_size, *buckets[-1])]

    async def warm_up(self, max_batch_size: int) -> None:
        """Run every warm-up shape once (pad colour only); ValueError if the backend returns a wrong shape."""
        shapes = self.warmup_shapes(max_batch_size)
        start = time.perf_counter()
        for index, shape in enumerate(shapes, start=1):
            images = np.empty((*shape, 3), dtype=np.uint8)
            images[...] = self.pad_colour
            labels = await self.batcher.run_direct(images)
            if labels.shape != shape:
                raise ValueError(f"backend returned {labels.shape} for input {images.shape}")
            if index % max(1, len(shapes) // 10) == 0 or index == len(shapes):
                log.info("warm-up %d/%d shapes", index, len(shapes))
        log.info(
            "warm-up done", extra={"shapes": len(shapes), "seconds": round(time.perf_counter() - start, 2)}
        )

    async def stop(self) -> None:
        """Stop the batcher (queued requests get ShuttingDownError) and release the backend."""
        await self.batcher.stop()
        self.backend.close()
