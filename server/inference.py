"""One request's images through a model's batcher: queue, wait (deadline, disconnect), collect the labels.

Shared by ``POST /segment`` and the Open Inference Protocol's ``infer``: both admit images the same way
and fail the same way; each route only renders :class:`Failure` in its own error format.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from starlette.types import Receive

from server.batcher import BatchResult, DeadlineError, InferenceError, Job, QueueFullError, ShuttingDownError
from server.errors import CLIENT_CLOSED, status_of
from server.metrics import Metrics
from server.served import ServedModel
from server.settings import Settings

log = logging.getLogger("server")


@dataclass
class Failure(Exception):
    """The request ends with ``status``: what happened, and headers the answer must carry."""

    status: int
    detail: str
    headers: dict[str, str] | None = None


async def infer(
    model: ServedModel,
    images: Sequence[np.ndarray],
    deadline: float,
    receive: Receive,
    settings: Settings,
    metrics: Metrics,
) -> list[BatchResult]:
    """Queue ``images`` (each padded to its bucket) and wait for their labels, the client's disconnect or
    the deadline; raises :class:`Failure`. The body must have been read already."""
    jobs: list[Job] = []
    try:
        for image in images:
            jobs.append(model.batcher.submit(image, deadline))
    except QueueFullError:
        for job in jobs:
            model.batcher.discard(job)
        metrics.failures.labels("rejected").inc()
        raise Failure(
            settings.queue_full_status,
            f"queue full ({model.batcher.depth} images waiting); retry after {settings.retry_after_s} s",
            {"Retry-After": str(settings.retry_after_s)},
        ) from None
    loop = asyncio.get_running_loop()
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    pending: set[asyncio.Future[object]] = {job.future for job in jobs}  # type: ignore[misc]
    try:
        while pending:
            timeout = max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait(
                pending | {watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done or watcher in done:
                break
            pending -= done
            if any(not f.cancelled() and f.exception() is not None for f in done):
                break
    finally:
        watcher.cancel()
    for job in jobs:
        if job.future.done() and not job.future.cancelled() and (error := job.future.exception()) is not None:
            _discard(model, jobs)
            raise _failure(error, settings, metrics)
    if all(job.future.done() and not job.future.cancelled() for job in jobs):
        return [job.future.result() for job in jobs]
    if watcher.done() and not watcher.cancelled():
        before_compute = all([model.batcher.discard(job) for job in jobs])
        metrics.failures.labels("cancelled").inc()
        log.info("client disconnected", extra={"dropped_before_compute": before_compute})
        raise Failure(CLIENT_CLOSED, "client closed the request")
    started = any(job.started for job in jobs)
    _discard(model, jobs)
    metrics.failures.labels("expired").inc()
    where = "during inference" if started else "while queued"
    raise Failure(
        status_of(DeadlineError()), f"deadline of {settings.deadline_ms:g} ms passed {where}; retry later"
    )


def _discard(model: ServedModel, jobs: Sequence[Job]) -> None:
    for job in jobs:
        model.batcher.discard(job)


def _failure(exc: BaseException, settings: Settings, metrics: Metrics) -> Failure:
    if isinstance(exc, DeadlineError):
        metrics.failures.labels("expired").inc()
        return Failure(
            status_of(exc), f"deadline of {settings.deadline_ms:g} ms passed while queued; retry later"
        )
    if isinstance(exc, InferenceError):
        metrics.failures.labels("backend").inc()
        log.error("inference failed", extra={"cause": exc.cause})
        return Failure(
            status_of(exc),
            f"inference failed on this request's batch ({exc.cause}); other requests are unaffected",
        )
    if isinstance(exc, ShuttingDownError):
        return Failure(status_of(exc), "server is shutting down; retry elsewhere", {"Connection": "close"})
    raise exc


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
