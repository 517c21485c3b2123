"""``POST /segment``: image bytes → decode → batch → forward → encode → response.

Read top to bottom: admission (ready, not draining, room in the budget of bodies held at once) → body
within its limits (:mod:`server.upload`) → prepare on a codec thread (:func:`server.pipeline.prepare`,
stopped at the deadline or when the client leaves) → the batcher's queue → wait for the batch (deadline,
client disconnect, backend failure: :mod:`server.inference`) → finish on a codec thread → response with
timing headers. Requests are counted by :class:`server.middleware.RequestMetrics`
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

from server.errors import CLIENT_CLOSED, error_response, status_of
from server.imaging import Budget, DecodeCancelled, DecodeDeadline, DecodeLimits, ImageError
from server.inference import Failure, infer, wait_disconnect
from server.lifecycle import Service
from server.negotiation import choose_format
from server.pipeline import MEDIA_TYPES, OutputFormat, Prepared, finish, prepare
from server.registry import UnknownModel
from server.routes.deps import ServiceDep, require_key
from server.schemas import SEGMENT_REQUEST, SEGMENT_RESPONSES
from server.served import ServedModel
from server.upload import BodyLimits, ClientGone, UploadError, read_image_bytes, reserved_size

log = logging.getLogger("server")

TIMING_HEADERS = (
    "X-Request-ID",
    "X-Model",
    "X-Model-Version",
    "X-Batch-Size",
    "X-Queue-Ms",
    "X-Inference-Ms",
)
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
    model: Annotated[
        str | None, Query(description="model name (default: the server's default model)")
    ] = None,
    version: Annotated[
        int | None, Query(ge=1, description="model version (default: the serving one)")
    ] = None,
) -> Response:
    """Segment one image: multipart field ``image`` or a raw ``image/*`` body."""
    refusal = service.refusal()
    if refusal is not None:
        return error_response(503, *refusal)
    try:
        with service.admitted() as registry, registry.hold(model, version) as served:
            return await _segment(service, served, request, format)
    except UnknownModel as exc:
        return error_response(404, str(exc))


async def _segment(
    service: Service, model: ServedModel, request: Request, query_format: OutputFormat | None
) -> Response:
    settings, metrics = service.settings, service.metrics
    stages = model.metrics.stages
    deadline = asyncio.get_running_loop().time() + settings.deadline_ms / 1000
    fmt = choose_format(query_format, request.headers.get("accept"))
    prepared = await _read_and_prepare(service, model, request, deadline)
    if isinstance(prepared, Response):
        return prepared
    try:
        (outcome,) = await infer(model, [prepared.padded], deadline, request.receive, settings, metrics)
    except Failure as failure:
        return error_response(failure.status, failure.detail, failure.headers)
    stages.labels("queue").observe(outcome.queue_s)
    stages.labels("infer").observe(outcome.inference_s)
    start = time.perf_counter()
    finished = await service.in_codec_thread(finish, outcome.labels, prepared, fmt, model.metadata)
    metrics.encode_seconds.observe(time.perf_counter() - start)
    for stage, seconds in finished.cpu_s.items():
        stages.labels(stage).observe(seconds)
    headers = {
        "X-Model": model.name.encode("ascii", "replace").decode(),
        "X-Model-Version": str(model.version),
        "X-Batch-Size": str(outcome.batch_size),
        "X-Queue-Ms": f"{outcome.queue_s * 1000:.2f}",
        "X-Inference-Ms": f"{outcome.inference_s * 1000:.2f}",
        "Vary": "Accept",
    }
    return Response(finished.body, media_type=MEDIA_TYPES[fmt], headers=headers)


async def _read_and_prepare(
    service: Service, model: ServedModel, request: Request, deadline: float
) -> Prepared | Response:
    """The upload, admitted into the budget of bodies held at once, read within its limits and decoded on a
    codec thread; or the error response. The body's bytes are given back when this returns."""
    settings, metrics, stages = service.settings, service.metrics, model.metrics.stages
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
            start = time.perf_counter()
            data = await read_image_bytes(request, limits)
            stages.labels("receive").observe(time.perf_counter() - start)
            start = time.perf_counter()
            prepared = await _prepare(service, model, data, request.receive, deadline)
            metrics.decode_seconds.observe(time.perf_counter() - start)
            for stage, seconds in prepared.cpu_s.items():
                stages.labels(stage).observe(seconds)
            return prepared
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


async def _prepare(
    service: Service, model: ServedModel, data: bytes, receive: Receive, deadline: float
) -> Prepared:
    """:func:`prepare` on a codec thread under a :class:`Budget`: when the deadline passes or the client
    leaves, the budget is cancelled (the decoder stops at its next piece of the file or step) and
    :class:`DecodeDeadline` / :class:`DecodeCancelled` is raised without waiting for the thread."""
    loop = asyncio.get_running_loop()
    budget = Budget(time.monotonic() + (deadline - loop.time()))
    limits = DecodeLimits.from_settings(service.settings)
    work = asyncio.ensure_future(
        service.in_codec_thread(prepare, data, model.geometry, model.pad_colour, limits, budget)
    )
    watcher = asyncio.ensure_future(wait_disconnect(receive))
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
