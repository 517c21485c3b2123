"""``POST /segment``: image bytes → decode → batch → forward → encode → response.

Read top to bottom: admission (ready, not draining) → body within its limits (:mod:`server.upload`) →
prepare on a codec thread (:func:`server.pipeline.prepare`, stopped at the deadline or when the client
leaves) → the batcher's queue → wait for the batch (deadline, client disconnect, backend failure) → finish
on a codec thread → response with timing headers.
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
from server.imaging import Budget, DecodeCancelled, DecodeDeadline, DecodeLimits, ImageError
from server.lifecycle import Service
from server.negotiation import choose_format
from server.pipeline import MEDIA_TYPES, OutputFormat, Prepared, finish, prepare
from server.routes.deps import ServiceDep, require_key
from server.schemas import SEGMENT_REQUEST, SEGMENT_RESPONSES
from server.upload import BodyLimits, ClientGone, UploadError, read_image_bytes

log = logging.getLogger("server")

TIMING_HEADERS = ("X-Request-ID", "X-Model", "X-Batch-Size", "X-Queue-Ms", "X-Inference-Ms")
"""Headers the web page reads (CORS exposes them)."""

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
    started = time.perf_counter()
    if service.draining:
        response = error_response(
            503, "server is shutting down; retry elsewhere", {"Connection": "close", "Retry-After": "1"}
        )
    elif not service.ready:
        response = error_response(503, "model is not ready yet (loading or warming up)", {"Retry-After": "1"})
    else:
        service.inflight += 1
        try:
            response = await _segment(service, request, format)
        finally:
            service.inflight -= 1
    service.metrics.requests.labels(str(response.status_code)).inc()
    service.metrics.request_seconds.observe(time.perf_counter() - started)
    return response


async def _segment(service: Service, request: Request, query_format: OutputFormat | None) -> Response:
    settings, metrics, model = service.settings, service.metrics, service.model
    assert model is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.deadline_ms / 1000
    fmt = choose_format(query_format, request.headers.get("accept"))
    limits = BodyLimits(settings.max_body_bytes, settings.max_form_parts, settings.deadline_ms / 1000)
    try:
        data = await read_image_bytes(request, limits)
        start = time.perf_counter()
        prepared = await _prepare(service, data, request.receive, deadline)
        metrics.decode_seconds.observe(time.perf_counter() - start)
    except ClientGone:
        metrics.failures.labels("cancelled").inc()
        return error_response(CLIENT_CLOSED, "client closed the request during the upload")
    except DecodeCancelled as exc:
        metrics.failures.labels("cancelled").inc()
        return error_response(status_of(exc), "client closed the request while its image was decoded")
    except DecodeDeadline as exc:
        metrics.failures.labels("expired").inc()
        return error_response(
            status_of(exc), f"deadline of {settings.deadline_ms:g} ms passed while decoding the image"
        )
    except (UploadError, ImageError) as exc:
        metrics.failures.labels("bad_input").inc()
        return error_response(status_of(exc), exc.detail)
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


async def _prepare(service: Service, data: bytes, receive: Receive, deadline: float) -> Prepared:
    """:func:`prepare` on a codec thread under a :class:`Budget`: when the deadline passes or the client
    leaves, the budget is cancelled (the decoder stops at its next piece of the file or step) and
    :class:`DecodeDeadline` / :class:`DecodeCancelled` is raised without waiting for the thread."""
    model = service.model
    assert model is not None
    loop = asyncio.get_running_loop()
    budget = Budget(time.monotonic() + (deadline - loop.time()))
    limits = DecodeLimits.from_settings(service.settings)
    work = asyncio.ensure_future(
        service.in_codec_thread(prepare, data, model.geometry, model.pad_colour, limits, budget)
    )
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        done, _ = await asyncio.wait(
            {work, watcher}, timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watcher.cancel()
    if work in done:
        return work.result()  # type: ignore[no-any-return]
    budget.cancel()
    work.cancel()
    raise DecodeCancelled() if watcher in done else DecodeDeadline()


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
