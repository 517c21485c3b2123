"""The service's run-time state and its life: load, warm up, report ready, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from server.backends.base import Backend
from server.metrics import Metrics
from server.served import ServedModel
from server.settings import Settings

log = logging.getLogger("server")

BackendLoader = Callable[[Settings], Backend]


@dataclass
class Service:
    """Everything one app instance owns at run time (no module globals)."""

    settings: Settings
    metrics: Metrics
    model: ServedModel | None = None
    ready: bool = False
    draining: bool = False
    fatal: str | None = None
    inflight: int = 0
    codec_pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    on_fatal: Callable[[], None] | None = field(default=None, repr=False)

    def not_ready_reason(self) -> str | None:
        """Why /health/ready must answer 503, or None when ready."""
        if self.draining:
            return "server is shutting down"
        if self.fatal:
            return self.fatal
        if not self.ready or self.model is None:
            return "model is loading and warming up"
        busy = self.model.batcher.busy_since
        if busy is not None and time.monotonic() - busy > self.settings.stall_timeout_s:
            return f"backend stalled: a batch has run for {time.monotonic() - busy:.0f} s"
        return None

    async def in_codec_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run CPU-bound image work (decode, encode) on the bounded codec pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.codec_pool, func, *args)

    async def abort(self) -> None:
        """Answer every queued and running request now with 503 (the drain timeout has passed)."""
        if self.model is not None:
            await self.model.batcher.stop()
        end = time.monotonic() + 1.0
        while self.inflight > 0 and time.monotonic() < end:
            await asyncio.sleep(0.01)

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting requests; wait at most ``timeout_s`` for in-flight ones. True if all finished."""
        self.draining = True
        end = time.monotonic() + timeout_s
        while self.inflight > 0 and time.monotonic() < end:
            await asyncio.sleep(0.02)
        return self.inflight == 0


def lifespan(service: Service, backend_loader: BackendLoader) -> Callable[[FastAPI], AsyncIterator[None]]:
    """The app's lifespan: load the backend (in a worker thread), start serving it, warm up in the
    background (readiness turns 200 after), and on shutdown stop the batcher and free the backend."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        settings = service.settings
        backend = await run_in_threadpool(backend_loader, settings)
        threads = settings.codec_threads or min(4, os.cpu_count() or 1)
        service.codec_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="codec")
        service.model = ServedModel.start(backend, settings, service.metrics)
        fallback = [reason.kind for reason in backend.fallback]
        service.metrics.set_backend(backend.name, backend.provider, fallback)
        log.info(
            "model loaded",
            extra={
                "model": backend.metadata.name,
                "backend": backend.name,
                "provider": backend.provider,
                "fallback": ",".join(fallback) or "none",
            },
        )
        warm = asyncio.create_task(_warm_up(service))
        try:
            yield
        finally:
            warm.cancel()
            await service.model.stop()
            service.codec_pool.shutdown(wait=False, cancel_futures=True)

    return run  # type: ignore[return-value]


async def _warm_up(service: Service) -> None:
    """Warm the model up (if configured), then report ready. A failure marks the service fatal (readiness
    stays 503 and ``python -m server`` exits 1)."""
    assert service.model is not None
    try:
        if service.settings.warmup:
            await service.model.warm_up(service.settings.max_batch_size)
        service.ready = True
        log.info("ready")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        service.fatal = f"warm-up failed: {type(exc).__name__}: {exc}"
        log.error(service.fatal)
        if service.on_fatal is not None:
            service.on_fatal()
