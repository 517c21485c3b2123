"""The loaded models: lookup by name and version, zero-downtime version swaps, unloads that drain first.

One version of each model serves at a time (Triton's ``latest: 1`` policy). Loading a version builds
and warms it completely before it takes traffic; the version it replaces stops receiving new requests at
that moment, finishes the ones it accepted, and only then is stopped and its memory released. A load
that fails (unreadable file, wrong inputs/outputs, other classes than the serving version) leaves the
serving version untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from typing import Any

from server.backends.base import BackendError
from server.backends.select import BackendLoader
from server.metrics import Metrics
from server.repository import InvalidName, ModelVersion, Repository, RepositoryError
from server.served import ServedModel
from server.settings import Settings

log = logging.getLogger("server")


class UnknownModel(Exception):
    """No such model or version is loaded (or exists)."""


class LoadError(Exception):
    """A model version could not be loaded (or was refused); the serving version, if any, is untouched."""


class ModelRegistry:
    """Model versions that serve, by name; the default model answers requests that name none."""

    def __init__(
        self, settings: Settings, metrics: Metrics, repository: Repository, loader: BackendLoader
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository = repository
        self.loader = loader
        self.default_name = settings.default_model
        self._serving: dict[str, ServedModel] = {}
        self._failed: dict[tuple[str, int], str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    # ---- lookup ------------------------------------------------------------------------------------------

    def get(self, name: str | None = None, version: int | None = None) -> ServedModel:
        """The serving version of ``name`` (the default model when None); UnknownModel names what is
        loaded."""
        name = name or self.default_name
        model = self._serving.get(name) if name else None
        if model is None:
            raise UnknownModel(f"model {name!r} is not loaded; loaded: {sorted(self._serving)}")
        if version is not None and version != model.version:
            raise UnknownModel(
                f"model {name!r} version {version} is not loaded; serving version {model.version}"
            )
        return model

    @contextlib.contextmanager
    def hold(self, name: str | None = None, version: int | None = None) -> Iterator[ServedModel]:
        """The model for one request, counted in flight so a swap or unload waits for it to finish."""
        model = self.get(name, version)
        model.inflight += 1
        try:
            yield model
        finally:
            model.inflight -= 1

    def loaded(self) -> list[ServedModel]:
        """The serving versions, by model name."""
        return [self._serving[name] for name in sorted(self._serving)]

    def busy_since(self) -> float | None:
        """When the oldest batch still running (on any model) started."""
        return min((b for m in self.loaded() if (b := m.batcher.busy_since) is not None), default=None)

    # ---- loading and unloading -------------------------------------------------------------------------

    async def load(self, name: str, version: int | None = None) -> ServedModel:
        """Load ``version`` (default: the latest on disk) of ``name``, warm it up, then swap it in."""
        try:
            target = self.repository.resolve(name, version)
        except InvalidName as exc:
            raise LoadError(str(exc)) from None
        except RepositoryError as exc:
            raise UnknownModel(str(exc)) from None
        async with self._locks.setdefault(name, asyncio.Lock()):
            try:
                model = await self._build(target)
            except LoadError as exc:
                self._failed[(name, target.version)] = str(exc)
                raise
            self._failed.pop((name, target.version), None)
            old = self._serving.get(name)
            self._serving[name] = model
            if self.default_name is None:
                self.default_name = name
            log.info(
                "serving", extra={"model": name, "version": target.version, "replaces": old and old.version}
            )
            if old is not None:
                self._retire(old)
            return model

    async def unload(self, name: str) -> int:
        """Stop serving ``name``: new requests get 404 at once, accepted ones finish; returns the version."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            model = self._serving.pop(name, None)
            if model is None:
                raise UnknownModel(f"model {name!r} is not loaded; loaded: {sorted(self._serving)}")
            await self._retire(model)
            return model.version

    async def _build(self, target: ModelVersion) -> ServedModel:
        settings = self.settings.model_copy(update={"model": target.path})
        start = time.perf_counter()
        try:
            backend = await asyncio.to_thread(self.loader, settings)
        except BackendError as exc:
            raise LoadError(f"cannot load {target.name} version {target.version}: {exc}") from None
        serving = self._serving.get(target.name)
        if serving is not None and serving.metadata.classes != backend.metadata.classes:
            backend.close()
            raise LoadError(
                f"{target.name} version {target.version} has {backend.metadata.num_classes} classes "
                f"{list(backend.metadata.classes[:4])}..., the serving version {serving.version} has "
                f"{serving.metadata.num_classes} {list(serving.metadata.classes[:4])}...: "
                "load it as another model"
            )
        model = ServedModel.start(target.name, target.version, backend, self.settings, self.metrics)
        fallback = [reason.kind for reason in backend.fallback]
        if fallback:
            log.error("%s version %d serves on a fallback: %s", target.name, target.version, backend.fallback)
        self.metrics.set_backend(target.name, target.version, backend.name, backend.provider, fallback)
        try:
            await model.choose_batch_cap(self.settings)
            if self.settings.warmup:
                await model.warm_up()
        except Exception as exc:
            await model.stop()
            self._forget(model)
            raise LoadError(
                f"{target.name} version {target.version} failed its warm-up: {type(exc).__name__}: {exc}"
            ) from None
        seconds = round(time.perf_counter() - start, 2)
        log.info("loaded", extra={"model": target.name, "version": target.version, "seconds": seconds})
        log.info("execution", extra={"execution": model.execution()})
        return model

    def _retire(self, model: ServedModel) -> asyncio.Task[None]:
        """Drain ``model`` (at most ``drain_timeout_s``), then stop it and release its memory."""

        async def retire() -> None:
            drained = await model.drain(self.settings.drain_timeout_s)
            await model.stop()
            self._forget(model)
            gc.collect()
            log.info("unloaded", extra={"model": model.name, "version": model.version, "drained": drained})

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    def _forget(self, model: ServedModel) -> None:
        serving = self._serving.get(model.name)
        if serving is None or serving.version != model.version:
            self.metrics.forget(model.name, model.version)

    async def stop(self) -> None:
        """Stop every model now (shutdown); queued requests get ShuttingDownError."""
        models, self._serving = list(self._serving.values()), {}
        for model in models:
            await model.stop()
        for task in list(self._retiring):
            with contextlib.suppress(Exception):
                await task

    # ---- the repository index --------------------------------------------------------------------------

    def index(self) -> list[dict[str, Any]]:
        """Every model version on disk with its state (Triton's repository index)."""
        entries = []
        for name in self.repository.names():
            serving = self._serving.get(name)
            for candidate in self.repository.versions(name):
                entry: dict[str, Any] = {"name": name, "version": str(candidate.version)}
                if serving is not None and serving.version == candidate.version:
                    entry["state"] = "READY"
                else:
                    entry["state"] = "UNAVAILABLE"
                    entry["reason"] = self._failed.get((name, candidate.version), "not loaded")
                entries.append(entry)
        return entries
