"""The FastAPI application: ``create_app(settings, backend_loader)`` builds routes, lifespan and middleware.

Request path: bytes (limited while streaming) -> header-only size check -> decode + EXIF + RGB -> resize
to ``max_side`` -> pad to the image's own bucket -> batcher queue -> backend -> crop -> resize back ->
PNG or RLE-JSON -> response with timing headers.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.metadata import ModelMetadata, Normalization
from server.backends.base import Backend
from server.backends.select import load_backend
from server.batcher import (
    Batcher,
    BatchResult,
    DeadlineError,
    InferenceError,
    Job,
    QueueFullError,
    ShuttingDownError,
    all_buckets,
    bucket_shape,
    pad_to,
)
from server.imaging import (
    ACCEPTED_TEXT,
    InputError,
    decode_for_inference,
    encode_label_png,
    inference_size,
    resize_labels,
    resize_rgb,
)
from server.logs import request_id_var
from server.masks import class_rles
from server.metrics import Metrics
from server.settings import Settings
from server.upload import read_image_bytes

log = logging.getLogger("server")

STATIC_DIR = Path(__file__).resolve().parent / "static"
BackendLoader = Callable[[Settings], Backend]
OutputFormat = Literal["png", "json"]
TIMING_HEADERS = ("X-Request-ID", "X-Model", "X-Batch-Size", "X-Queue-Ms", "X-Inference-Ms")


def neutral_colour(normalization: Normalization) -> tuple[int, int, int]:
    """The uint8 RGB colour that normalises to (about) zero: the padding colour of every bucket."""
    rgb_mean = normalization.mean if normalization.channel_order == "RGB" else normalization.mean[::-1]
    return tuple(int(np.clip(round(m / normalization.scale), 0, 255)) for m in rgb_mean)  # type: ignore[return-value]


def choose_format(query: OutputFormat | None, accept: str | None) -> OutputFormat:
    """``?format`` wins; else ``application/json`` in Accept with a higher q than ``image/png``; else PNG."""
    if query is not None:
        return query
    weights: dict[str, float] = {}
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        weights[media.lower()] = max(weights.get(media.lower(), 0.0), quality)
    json_q = weights.get("application/json", 0.0)
    return "json" if json_q > 0 and json_q > weights.get("image/png", 0.0) else "png"


@dataclass
class Service:
    """Everything one app instance owns at run time (no module globals)."""

    settings: Settings
    metrics: Metrics
    backend: Backend | None = None
    batcher: Batcher | None = None
    pad_colour: tuple[int, int, int] = (0, 0, 0)
    ready: bool = False
    draining: bool = False
    fatal: str | None = None
    inflight: int = 0
    codec_pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    on_fatal: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def metadata(self) -> ModelMetadata:
        assert self.backend is not None
        return self.backend.metadata

    def not_ready_reason(self) -> str | None:
        """Why /health/ready must answer 503, or None when ready."""
        if self.draining:
            return "server is shutting down"
        if self.fatal:
            return self.fatal
        if not self.ready:
            return "model is loading and warming up"
        busy = self.batcher.busy_since if self.batcher else None
        if busy is not None and time.monotonic() - busy > self.settings.stall_timeout_s:
            return f"backend stalled: a batch has run for {time.monotonic() - busy:.0f} s"
        return None

    async def in_codec_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run CPU-bound image work (decode, encode) on the bounded codec pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.codec_pool, func, *args)

    async def abort(self) -> None:
        """Answer every queued and running request now with 503 (the drain timeout has passed)."""
        if self.batcher is not None:
            await self.batcher.stop()
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


# ---- response models (documentation of the API in /openapi.json) -----------------------------------------


class RLE(BaseModel):
    size: list[int]
    counts: str


class ClassMask(BaseModel):
    id: int
    name: str
    pixels: int
    fraction: float
    rle: RLE


class Segmentation(BaseModel):
    model: str
    width: int
    height: int
    classes: list[ClassMask]


class ErrorBody(BaseModel):
    detail: str


_BINARY = {"schema": {"type": "string", "format": "binary"}}
SEGMENT_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            **{f"image/{kind}": _BINARY for kind in ("jpeg", "png", "webp", "bmp", "tiff", "gif")},
        },
    }
}
SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Segmentation,
        "content": {"image/png": _BINARY},
        "description": "label PNG or class-mask JSON",
    },
    **{
        code: {"model": ErrorBody, "description": text}
        for code, text in {
            400: "undecodable or truncated image",
            401: "missing or wrong API key",
            408: "the body did not arrive within the deadline",
            413: "body over the byte limit or image over the pixel limit",
            415: "unsupported content type or image format",
            422: "bad parameters or multipart fields",
            429: "queue full (Retry-After says when to retry)",
            500: "the model failed on this request's batch",
            503: "not ready, draining, or queue full when so configured",
            504: "deadline passed before the result was ready",
        }.items()
    },
}


# ---- middleware ------------------------------------------------------------------------------------------


class RequestIdMiddleware:
    """Gives each request an id (the client's X-Request-ID if sane), echoes it, logs one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        start = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={"status": status, "ms": round((time.perf_counter() - start) * 1000, 2)},
            )
            request_id_var.reset(token)


class HeaderLimitMiddleware:
    """Answers 431 when the request's headers add up to more than ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.limit:
                detail = f"request headers total {size} bytes; the limit is {self.limit} bytes"
                await _error(431, detail, {"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request parameters: " + "; ".join(parts) + " (format accepts png or json)"


# ---- the application -------------------------------------------------------------------------------------


def create_app(settings: Settings, backend_loader: BackendLoader = load_backend) -> FastAPI:
    """Build the service. ``backend_loader(settings) -> Backend`` is called once at start-up (in a worker
    thread); pass your own to serve a test double or a preloaded backend (``lambda _: backend``).
    """
    service = Service(settings=settings, metrics=Metrics(settings.max_batch_size))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = await run_in_threadpool(backend_loader, settings)
        threads = settings.codec_threads or min(4, os.cpu_count() or 1)
        service.codec_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="codec")
        service.backend = backend
        service.pad_colour = neutral_colour(backend.metadata.normalization)
        service.batcher = Batcher(
            backend.run,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_delay_ms / 1000,
            queue_size=settings.queue_size,
            metrics=service.metrics,
        )
        service.batcher.start()
        log.info(
            "model loaded",
            extra={"model": backend.metadata.name, "backend": backend.name, "provider": backend.provider},
        )
        warm = asyncio.create_task(_warm_up(service))
        try:
            yield
        finally:
            warm.cancel()
            await service.batcher.stop()
            service.codec_pool.shutdown(wait=False, cancel_futures=True)
            backend.close()

    app = FastAPI(
        title="FCN semantic segmentation",
        version="1.0",
        summary="POST an image, get a per-pixel class map (label PNG or COCO-RLE JSON)",
        lifespan=lifespan,
    )
    app.state.service = service
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Accept", "X-API-Key", "X-Request-ID"],
            expose_headers=list(TIMING_HEADERS),
        )
    app.add_middleware(HeaderLimitMiddleware, limit=settings.max_header_bytes)
    app.add_middleware(RequestIdMiddleware)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_detail(exc))

    @app.exception_handler(Exception)
    async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__})")

    key_header = APIKeyHeader(
        name="X-API-Key", auto_error=False, description="needed when FCN_API_KEY is set"
    )

    def require_key(given: str | None = Depends(key_header)) -> None:
        expected = settings.api_key
        if expected is None:
            return
        if not given or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise HTTPException(401, "missing or wrong API key: send it in the X-API-Key header")

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        """200 while the process serves HTTP."""
        return {"status": "alive"}

    @app.get("/health/ready", tags=["health"], responses={503: {"model": ErrorBody}})
    async def ready() -> Response:
        """200 once the model is loaded and warmed up; 503 before, while draining, or when stalled."""
        reason = service.not_ready_reason()
        if reason is not None:
            return _error(503, reason)
        return JSONResponse({"status": "ready"})

    @app.get("/v1/model", tags=["model"], dependencies=[Depends(require_key)])
    async def model_info() -> Response:
        """The model, backend and provider in use, its classes and colours, input limits and batching."""
        if service.backend is None:
            return _error(503, "model is not loaded yet")
        backend, meta = service.backend, service.metadata
        return JSONResponse(
            {
                "name": meta.name,
                "architecture": meta.architecture,
                "width": meta.width,
                "backend": backend.name,
                "provider": backend.provider,
                "precision": backend.precision,
                "classes": [
                    {"id": i, "name": name, "color": list(meta.palette[i])}
                    for i, name in enumerate(meta.classes)
                ],
                "normalization": meta.to_dict()["normalization"],
                "metrics": meta.metrics,
                "limits": {
                    "max_body_bytes": settings.max_body_bytes,
                    "max_pixels": settings.max_pixels,
                    "max_side": settings.max_side,
                    "formats": ACCEPTED_TEXT,
                },
                "batching": {
                    "max_batch_size": settings.max_batch_size,
                    "max_delay_ms": settings.max_delay_ms,
                    "queue_size": settings.queue_size,
                    "deadline_ms": settings.deadline_ms,
                    "bucket": settings.bucket,
                },
            }
        )

    metrics_deps = [Depends(require_key)] if settings.metrics_need_key else []

    @app.get("/metrics", tags=["health"], dependencies=metrics_deps, response_class=Response)
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post(
        "/segment",
        tags=["segment"],
        dependencies=[Depends(require_key)],
        openapi_extra=SEGMENT_REQUEST,
        responses=SEGMENT_RESPONSES,
        response_class=Response,
    )
    async def segment(
        request: Request,
        format: Annotated[
            OutputFormat | None, Query(description="png or json; default from Accept, else png")
        ] = None,
    ) -> Response:
        """Segment one image: multipart field ``image`` or a raw ``image/*`` body."""
        started = time.perf_counter()
        if service.draining:
            response = _error(
                503, "server is shutting down; retry elsewhere", {"Connection": "close", "Retry-After": "1"}
            )
        elif not service.ready:
            response = _error(503, "model is not ready yet (loading or warming up)", {"Retry-After": "1"})
        else:
            service.inflight += 1
            try:
                response = await _segment(service, request, format)
            finally:
                service.inflight -= 1
        service.metrics.requests.labels(str(response.status_code)).inc()
        service.metrics.request_seconds.observe(time.perf_counter() - started)
        return response

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return _error(404, "the web page is not installed (server/static/index.html)")
        return FileResponse(page)

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app


async def _warm_up(service: Service) -> None:
    """Run every bucket shape once (batch 1) and the largest at ``max_batch_size``, then report ready.

    A failure marks the service fatal (readiness stays 503 and ``python -m server`` exits 1).
    """
    settings, batcher = service.settings, service.batcher
    assert batcher is not None
    try:
        if settings.warmup:
            buckets = all_buckets(settings.bucket, settings.max_side)
            shapes = [(1, h, w) for h, w in buckets] + [(settings.max_batch_size, *buckets[-1])]
            start = time.perf_counter()
            for index, shape in enumerate(shapes, start=1):
                images = np.empty((*shape, 3), dtype=np.uint8)
                images[...] = service.pad_colour
                labels = await batcher.run_direct(images)
                if labels.shape != shape:
                    raise ValueError(f"backend returned {labels.shape} for input {images.shape}")
                if index % max(1, len(shapes) // 10) == 0 or index == len(shapes):
                    log.info("warm-up %d/%d shapes", index, len(shapes))
            log.info(
                "warm-up done",
                extra={"shapes": len(shapes), "seconds": round(time.perf_counter() - start, 2)},
            )
        service.ready = True
        log.info("ready")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        service.fatal = f"warm-up failed: {type(exc).__name__}: {exc}"
        log.error(service.fatal)
        if service.on_fatal is not None:
            service.on_fatal()


def _prepare(
    data: bytes, settings: Settings, pad_colour: tuple[int, int, int]
) -> tuple[np.ndarray, Any, Any]:
    """Decode, resize to ``max_side`` and pad to the bucket: (padded, inference size, original size)."""
    rgb, original = decode_for_inference(data, settings.max_pixels, settings.max_side)
    size = inference_size(*original, settings.max_side)
    small = resize_rgb(rgb, size)
    padded = pad_to(small, bucket_shape(*size, settings.bucket, settings.max_side), pad_colour)
    return padded, size, original


def _encode(labels: np.ndarray, original: tuple[int, int], fmt: OutputFormat, meta: ModelMetadata) -> bytes:
    """Resize labels back to the input's size and encode them as a label PNG or class-mask JSON."""
    full = resize_labels(labels, original)
    if fmt == "png":
        return encode_label_png(full, meta.palette)
    height, width = full.shape
    classes = [
        {
            "id": cls,
            "name": meta.classes[cls] if cls < len(meta.classes) else f"class_{cls}",
            "pixels": pixels,
            "fraction": pixels / (height * width),
            "rle": rle,
        }
        for cls, (pixels, rle) in sorted(class_rles(full).items())
    ]
    body = {"model": meta.name, "width": width, "height": height, "classes": classes}
    return json.dumps(body, separators=(",", ":")).encode()


async def _wait_disconnect(receive: Receive) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _await_result(
    service: Service, job: Job, receive: Receive, deadline: float
) -> BatchResult | Response:
    """The job's result, or the error response for expiry, disconnection, backend failure or shutdown."""
    batcher, failures = service.batcher, service.metrics.failures
    assert batcher is not None
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
            return _error(
                500, f"inference failed on this request's batch ({exc.cause}); other requests are unaffected"
            )
        except ShuttingDownError:
            return _error(503, "server is shutting down; retry elsewhere", {"Connection": "close"})
    elif watcher in done:
        before_compute = batcher.discard(job)
        failures.labels("cancelled").inc()
        log.info("client disconnected", extra={"dropped_before_compute": before_compute})
        return _error(499, "client closed the request")
    batcher.discard(job)
    failures.labels("expired").inc()
    where = "during inference" if job.started else "while queued"
    return _error(504, f"deadline of {service.settings.deadline_ms:g} ms passed {where}; retry later")


async def _segment(service: Service, request: Request, query_format: OutputFormat | None) -> Response:
    settings, metrics = service.settings, service.metrics
    batcher, meta = service.batcher, service.metadata
    assert batcher is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.deadline_ms / 1000
    fmt = choose_format(query_format, request.headers.get("accept"))
    try:
        try:
            async with asyncio.timeout(settings.deadline_ms / 1000):
                data = await read_image_bytes(request, settings.max_body_bytes, settings.max_form_parts)
        except TimeoutError:
            raise InputError(
                408, f"the request body did not arrive within {settings.deadline_ms:g} ms"
            ) from None
        except ClientDisconnect:
            metrics.failures.labels("cancelled").inc()
            return _error(499, "client closed the request during the upload")
        start = time.perf_counter()
        padded, size, original = await service.in_codec_thread(_prepare, data, settings, service.pad_colour)
        metrics.decode_seconds.observe(time.perf_counter() - start)
    except InputError as exc:
        metrics.failures.labels("bad_input").inc()
        return _error(exc.status, exc.detail)
    try:
        job = batcher.submit(padded, size, deadline)
    except QueueFullError:
        metrics.failures.labels("rejected").inc()
        status = settings.queue_full_status
        return _error(
            status,
            f"queue full ({batcher.depth} images waiting); retry after {settings.retry_after_s} s",
            {"Retry-After": str(settings.retry_after_s)},
        )
    outcome = await _await_result(service, job, request.receive, deadline)
    if isinstance(outcome, Response):
        return outcome
    start = time.perf_counter()
    body = await service.in_codec_thread(_encode, outcome.labels, original, fmt, meta)
    metrics.encode_seconds.observe(time.perf_counter() - start)
    headers = {
        "X-Model": meta.name.encode("ascii", "replace").decode(),
        "X-Batch-Size": str(outcome.batch_size),
        "X-Queue-Ms": f"{outcome.queue_s * 1000:.2f}",
        "X-Inference-Ms": f"{outcome.inference_s * 1000:.2f}",
        "Vary": "Accept",
    }
    media_type = "image/png" if fmt == "png" else "application/json"
    return Response(body, media_type=media_type, headers=headers)
