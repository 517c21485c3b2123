"""``POST /segment``: image bytes → decode → batch → forward → encode → response.

Read top to bottom: admission (ready, not draining, room in the budget of bodies held at once) → body
within its limits (:mod:`server.upload`) → prepare on a codec thread (:func:`server.pipeline.prepare`) → the
batcher's queue → wait for the batch (deadline, client disconnect, backend failure) → finish on a codec
thread → response with timing headers. Requests are counted by :class:`server.middleware.RequestMetrics`
(refusals included); a refusal sent before the body was read closes the connection
(:mod:`server.protocol`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.types import Receive

from server.batcher import BatchResult, DeadlineError, InferenceError, Job, QueueFullError, ShuttingDownError
from server.errors import CLIENT_CLOSED, error_response, status_of
from server.imaging import ImageError
from server.lifecycle import Service
from server.negotiation import choose_format
from server.pipeline import MEDIA_TYPES, OutputFormat, Prepared, finish, prepare
from server.routes.deps import ServiceDep, require_key
from server.schemas import SEGMENT_REQUEST, SEGMENT_RESPONSES
from server.upload import BodyLimits, ClientGone, UploadError, read_image_bytes, reserved_size

log = logging.getLogger("server")

TIMING_HEADERS = ("X-Request-ID", "X-Model", "X-Batch-Size", "X-Queue-Ms", "X-Inference-Ms")
"""Headers the web page reads (CORS exposes them)."""
COUNTED_PATHS = frozenset({"/segment"})
"""Paths whose every answer (refusals included) is counted in ``fcn_requests_total``."""

router = APIRouter(tags=["segment"])


@router.post(
    "/segment",
    dependencies=[Depends(require_key)],
    openapi_extra=SEGMENT_REQUEST,
    responses=SEGMENT_RESPONSES,
    response_class=Response,
)
async def segment(
    request: Request,
    service: ServiceDep,
    format: Annotated[
        OutputFormat | None, Query(description="png or json; default from Accept, else png")
    ] = None,
) -> Response:
    """Segment one image: multipart field ``image`` or a raw ``image/*`` body."""
    if service.draining:
        return error_response(
            503, "server is shutting down; retry elsewhere", {"Connection": "close", "Retry-After": "1"}
        )
    if not service.ready:
        return error_response(503, "model is not ready yet (loading or warming up)", {"Retry-After": "1"})
    service.inflight += 1
    try:
        return await _segment(service, request, format)
    finally:
        service.inflight -= 1


async def _segment(service: Service, request: Request, query_format: OutputFormat | None) -> Response:
    settings, metrics, model = service.settings, service.metrics, service.model
    assert model is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.deadline_ms / 1000
    fmt = choose_format(query_format, request.headers.get("accept"))
    prepared = await _read_and_prepare(service, request)
    if isinstance(prepared, Response):
        return prepared
    try:
        job = model.batcher.submit(prepared.padded, deadline)
    except QueueFullError:
        metrics.failures.labels("rejected").inc()
        return error_response(
            settings.queue_full_status,
            f"queue full ({model.batcher.depth} images waiting); retry after {settings.retry_after_s} s",
            {"Retry-After": str(settings.retry_after_s)},
        )
    outcome = await _await_result(service, job, request.receive, deadline)
    if isinstance(outcome, Response):
        return outcome
    start = time.perf_counter()
    body = await service.in_codec_thread(finish, outcome.labels, prepared, fmt, model.metadata)
    metrics.encode_seconds.observe(time.perf_counter() - start)
    headers = {
        "X-Model": model.metadata.name.encode("ascii", "replace").decode(),
        "X-Batch-Size": str(outcome.batch_size),
        "X-Queue-Ms": f"{outcome.queue_s * 1000:.2f}",
        "X-Inference-Ms": f"{outcome.inference_s * 1000:.2f}",
        "Vary": "Accept",
    }
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)


async def _read_and_prepare(service: Service, request: Request) -> Prepared | Response:
    """The upload, admitted into the budget of bodies held at once, read within its limits and decoded on a
    codec thread; or the error response. The body's bytes are given back when this returns."""
    settings, metrics, model = service.settings, service.metrics, service.model
    assert model is not None
    limits = BodyLimits(settings.max_body_bytes, settings.max_form_parts, settings.deadline_ms / 1000)
    size = reserved_size(request.headers, limits.max_bytes)
    with service.bodies.reserve(size) as admitted:
        if not admitted:
            metrics.failures.labels("rejected").inc()
            return error_response(
                settings.queue_full_status,
                f"too many uploads in progress ({service.bodies.held} of {service.bodies.limit} body bytes "
                f"held, this one needs {size}); retry after {settings.retry_after_s} s",
                {"Retry-After": str(settings.retry_after_s)},
            )
        try:
            data = await read_image_bytes(request, limits)
            start = time.perf_counter()
            prepared: Prepared = await service.in_codec_thread(
                prepare, data, model.geometry, model.pad_colour, settings.max_pixels
            )
            metrics.decode_seconds.observe(time.perf_counter() - start)
            return prepared
        except ClientGone:
            metrics.failures.labels("cancelled").inc()
            return error_response(CLIENT_CLOSED, "client closed the request during the upload")
        except (UploadError, ImageError) as exc:
            metrics.failures.labels("bad_input").inc()
            return error_response(status_of(exc), exc.detail)


async def _wait_disconnect(receive: Receive) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _await_result(
    service: Service, job: Job, receive: Receive, deadline: float
) -> BatchResult | Response:
    """The job's result, or the error response for expiry, disconnection, backend failure or shutdown."""
    assert service.model is not None
    batcher, failures = service.model.batcher, service.metrics.failures
    loop = asyncio.get_running_loop()
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait(
            {job.future, watcher},
            timeout=max(0.0, deadline - loop.time()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        watcher.cancel()
    if job.future in done and not job.future.cancelled():
        try:
            return job.future.result()
        except DeadlineError:
            pass
        except InferenceError as exc:
            failures.labels("backend").inc()
            log.error("inference failed", extra={"cause": exc.cause})
            return error_response(
                status_of(exc),
                f"inference failed on this request's batch ({exc.cause}); other requests are unaffected",
            )
        except ShuttingDownError as exc:
            return error_response(
                status_of(exc), "server is shutting down; retry elsewhere", {"Connection": "close"}
            )
    elif watcher in done:
        before_compute = batcher.discard(job)
        failures.labels("cancelled").inc()
        log.info("client disconnected", extra={"dropped_before_compute": before_compute})
        return error_response(CLIENT_CLOSED, "client closed the request")
    batcher.discard(job)
    failures.labels("expired").inc()
    where = "during inference" if job.started else "while queued"
    return error_response(
        status_of(DeadlineError()),
        f"deadline of {service.settings.deadline_ms:g} ms passed {where}; retry later",
    )
