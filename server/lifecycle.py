"""The service's run-time state and its life: load, warm up, report ready, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from server.backends.select import BackendLoader
from server.metrics import Metrics
from server.registry import LoadError, ModelRegistry
from server.repository import Repository
from server.settings import Settings
from server.upload import BodyBudget

log = logging.getLogger("server")


def repository_of(settings: Settings) -> Repository:
    """The repository ``FCN_MODEL_REPOSITORY`` names, else a one-model repository of ``FCN_MODEL``."""
    if settings.model_repository is not None:
        return Repository(root=settings.model_repository)
    return Repository.single_file(settings.model)


@dataclass
class Service:
    """Everything one app instance owns at run time (no module globals)."""

    settings: Settings
    metrics: Metrics
    bodies: BodyBudget
    registry: ModelRegistry | None = None
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
        if not self.ready or self.registry is None:
            return "model is loading and warming up"
        busy = self.registry.busy_since()
        if busy is not None and time.monotonic() - busy > self.settings.stall_timeout_s:
            return f"backend stalled: a batch has run for {time.monotonic() - busy:.0f} s"
        return None

    def refusal(self) -> tuple[str, dict[str, str]] | None:
        """Why an inference request is answered 503 now (detail and headers), or None when it is admitted."""
        if self.draining:
            return "server is shutting down; retry elsewhere", {"Connection": "close", "Retry-After": "1"}
        if not self.ready or self.registry is None:
            return "model is not ready yet (loading or warming up)", {"Retry-After": "1"}
        return None

    @contextlib.contextmanager
    def admitted(self) -> Iterator[ModelRegistry]:
        """The registry, with the request counted in flight (the drain on SIGTERM waits for it)."""
        assert self.registry is not None
        self.inflight += 1
        try:
            yield self.registry
        finally:
            self.inflight -= 1

    async def in_codec_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run CPU-bound image work (decode, encode) on the bounded codec pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.codec_pool, func, *args)

    async def abort(self) -> None:
        """Answer every queued and running request now with 503 (the drain timeout has passed)."""
        if self.registry is not None:
            await self.registry.stop()
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
    """The app's lifespan: load the latest version of every model in the repository and warm them up in
    the background (readiness turns 200 after), and on shutdown stop every batcher and free the backends."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        settings = service.settings
        threads = settings.codec_threads or min(4, os.cpu_count() or 1)
        service.codec_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="codec")
        service.registry = ModelRegistry(settings, service.metrics, repository_of(settings), backend_loader)
        warm = asyncio.create_task(_load_all(service))
        try:
            yield
        finally:
            warm.cancel()
            await service.registry.stop()
            service.codec_pool.shutdown(wait=False, cancel_futures=True)

    return run  # type: ignore[return-value]


async def _load_all(service: Service) -> None:
    """Load and warm up the latest version of every model, then report ready. A failure marks the service
    fatal (readiness stays 503 and ``python -m server`` exits 1)."""
    registry = service.registry
    assert registry is not None
    try:
        for target in registry.repository.latest():
            await registry.load(target.name, target.version)
        registry.get()  # the default model must be among them
        service.ready = True
        log.info("ready", extra={"models": [f"{m.name}:{m.version}" for m in registry.loaded()]})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        reason = str(exc) if isinstance(exc, LoadError) else f"{type(exc).__name__}: {exc}"
        service.fatal = f"warm-up failed: {reason}"
        log.error(service.fatal)
        if service.on_fatal is not None:
            service.on_fatal()
