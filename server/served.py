"""A model being served: its backend, serving geometry, batcher, execution plan and warm-up."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.classes import Color
from common.geometry import ServingGeometry
from common.metadata import ModelMetadata
from server import tuning
from server.backends.base import Backend
from server.backends.ort import CUDA
from server.backends.tensorrt import TensorRTBackend
from server.batcher import Batcher
from server.metrics import Metrics, ModelMetrics
from server.settings import Settings

log = logging.getLogger("server")
GPU_PROVIDERS = (TensorRTBackend.provider, CUDA)
"""Providers that run on a GPU, where batches pay and ``max_batch_size`` is kept."""


@dataclass
class ServedModel:
    """Everything needed to turn a padded image into labels with one model."""

    name: str
    version: int
    backend: Backend
    geometry: ServingGeometry
    batcher: Batcher
    pad_colour: Color
    metrics: ModelMetrics
    batching: dict[str, Any] = field(default_factory=dict)
    """How ``max_batch_size`` was chosen (``settings``, ``device`` or ``measurement``) and the per-image
    times behind a measured cap."""

    inflight: int = 0
    """Requests holding this version (admitted, not yet answered): an unload waits for zero."""

    @classmethod
    def start(
        cls, name: str, version: int, backend: Backend, settings: Settings, metrics: Metrics
    ) -> ServedModel:
        """Serve ``backend`` with the geometry its metadata and ``settings`` imply; starts the batcher with
        one worker thread per backend instance."""
        meta = backend.metadata
        model_metrics = metrics.for_model(name, version)
        batcher = Batcher(
            backend.run,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_delay_ms / 1000,
            queue_size=settings.queue_size,
            metrics=model_metrics,
            instances=backend.instances,
        )
        batcher.start()
        return cls(
            name=name,
            version=version,
            backend=backend,
            geometry=ServingGeometry(meta.geometry, settings.max_side, settings.bucket),
            batcher=batcher,
            pad_colour=meta.normalization.neutral_rgb(),
            metrics=model_metrics,
        )

    @property
    def metadata(self) -> ModelMetadata:
        return self.backend.metadata

    def execution(self) -> dict[str, Any]:
        """Backend, instances, batch cap and the measurements behind them (for ``/v1/model`` and the log)."""
        return {
            "model": self.name,
            "version": self.version,
            "backend": self.backend.name,
            "provider": self.backend.provider,
            "instances": self.batcher.instances,
            "max_batch_size": self.batcher.max_batch_size,
            "selection": self.backend.selection,
            "batching": self.batching,
        }

    async def choose_batch_cap(self, settings: Settings) -> None:
        """Lower ``max_batch_size`` to the largest batch that still lowers the time per image, measured on
        a representative bucket; a value set explicitly, and GPUs, keep the configured size."""
        if "max_batch_size" in settings.model_fields_set:
            self.batching = {"chosen_by": "settings"}
            return
        if self.backend.provider in GPU_PROVIDERS or self.batcher.max_batch_size == 1:
            self.batching = {"chosen_by": "device" if self.batcher.max_batch_size > 1 else "settings"}
            return
        image = tuning.representative_image(self.geometry)
        cap, per_image = await asyncio.to_thread(
            tuning.measure_batch_cap, self.backend, image, self.batcher.max_batch_size
        )
        self.batcher.max_batch_size = cap
        self.batching = {
            "chosen_by": "measurement",
            "image": list(image.shape[:2]),
            "ms_per_image": {str(size): round(1000 * seconds, 2) for size, seconds in per_image.items()},
        }
        log.info("batch cap %d", cap, extra={"batching": self.batching})

    def warmup_shapes(self, max_batch_size: int) -> list[tuple[int, int, int]]:
        """Every bucket at batch 1, and the largest bucket at ``max_batch_size``."""
        buckets = self.geometry.buckets()
        return [(1, h, w) for h, w in buckets] + [(max_batch_size, *buckets[-1])]

    async def warm_up(self) -> None:
        """Run every warm-up shape once on every instance (pad colour only); ValueError if the backend
        returns a wrong shape."""
        shapes = self.warmup_shapes(self.batcher.max_batch_size)
        start = time.perf_counter()
        for index, shape in enumerate(shapes, start=1):
            images = np.empty((*shape, 3), dtype=np.uint8)
            images[...] = self.pad_colour
            for labels in await self.batcher.run_on_every_instance(images):
                if labels.shape != shape:
                    raise ValueError(f"backend returned {labels.shape} for input {images.shape}")
            if index % max(1, len(shapes) // 10) == 0 or index == len(shapes):
                log.info("warm-up %d/%d shapes", index, len(shapes))
        seconds = round(time.perf_counter() - start, 2)
        log.info("warm-up done", extra={"shapes": len(shapes), "seconds": seconds})

    async def drain(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` until no request holds this version; True if none does."""
        end = time.monotonic() + timeout_s
        while self.inflight > 0 and time.monotonic() < end:
            await asyncio.sleep(0.02)
        return self.inflight == 0

    async def stop(self) -> None:
        """Stop the batcher (queued requests get ShuttingDownError) and release the backend."""
        await self.batcher.stop()
        self.backend.close()
