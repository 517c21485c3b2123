"""The Open Inference Protocol (KServe v2) over HTTP/REST, with Triton's binary tensor and repository
extensions: health, server and model metadata, readiness, ``infer``, and repository index/load/unload.

``infer`` goes through the same registry, batcher, geometry and limits as ``POST /segment``, so the labels
of an image are the same either way. Errors are ``{"error": "..."}`` with the status of the problem.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from common.contract import INPUT_NAME, LABELS_NAME
from server.errors import status_of
from server.imaging import Budget, DecodeLimits, DecodeStopped, ImageError
from server.inference import Failure, infer
from server.lifecycle import Service
from server.oip import BYTES_INPUT, HEADER_LENGTH, ProtocolError, encode_response, parse_request
from server.pipeline import Prepared, labels_at_upload_size, prepare, prepare_pixels
from server.registry import LoadError, UnknownModel
from server.routes.deps import ServiceDep, check_key, key_header
from server.schemas import NO_BODY, V2_RESPONSES
from server.served import ServedModel
from server.upload import BodyLimits, ClientGone, UploadError, read_body

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino", "tensorrt": "tensorrt_plan"}
SERVER_NAME = "fcn8s-serving"
VERSION = re.compile(r"[1-9][0-9]{0,8}")
"""A model version in a path or a load request: a positive decimal integer."""
EXTENSIONS = ["binary_tensor_data", "model_repository"]


def require_key(service: ServiceDep, given: Annotated[str | None, Depends(key_header)]) -> None:
    """The API key in the protocol's error format."""
    try:
        check_key(service, given)
    except HTTPException as exc:
        raise ProtocolError(exc.status_code, str(exc.detail)) from None


router = APIRouter(prefix="/v2", tags=["open inference protocol"], responses=V2_RESPONSES)
keyed = APIRouter(
    prefix="/v2",
    tags=["open inference protocol"],
    dependencies=[Depends(require_key)],
    responses=V2_RESPONSES,
)


def install(app: FastAPI) -> None:
    """Add the routes and render ProtocolError as ``{"error": ...}``."""

    @app.exception_handler(ProtocolError)
    async def _on_protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return error(exc.status, exc.message)

    app.include_router(router)
    app.include_router(keyed)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The protocol's error body."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ---- health and metadata ----


@router.get("")
async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions it supports."""
    return {"name": SERVER_NAME, "version": "1.0", "extensions": EXTENSIONS}


@router.get("/health/live", response_class=Response, responses=NO_BODY)
async def live() -> Response:
    """200 while the process serves HTTP."""
    return Response(status_code=200)


@router.get("/health/ready", response_class=Response, responses=NO_BODY)
async def ready(service: ServiceDep) -> Response:
    """200 once every start-up model is loaded and warm, 400 before (the protocol's "false")."""
    return Response(status_code=200 if service.not_ready_reason() is None else 400)


def _model(service: Service, name: str, version: str | None) -> ServedModel:
    if service.registry is None:
        raise ProtocolError(503, "models are loading")
    if version is not None and not VERSION.fullmatch(version):
        raise ProtocolError(400, f"model version must be a positive integer, got {version!r}")
    try:
        return service.registry.get(name, int(version) if version else None)
    except UnknownModel as exc:
        raise ProtocolError(404, str(exc)) from None


def _metadata(model: ServedModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": PLATFORMS.get(model.backend.name, model.backend.name),
        "inputs": [
            {"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
            {"name": BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": LABELS_NAME, "datatype": "UINT8", "shape": [-1, -1, -1]}],
        "parameters": {"classes": list(model.metadata.classes), "title": model.metadata.name},
    }


@keyed.get("/models/{name}")
async def model_metadata(service: ServiceDep, name: str) -> dict[str, Any]:
    """The serving version's inputs (``image`` or ``image_bytes``, one per request) and output ``labels``."""
    return _metadata(_model(service, name, None))


@keyed.get("/models/{name}/versions/{version}")
async def model_version_metadata(service: ServiceDep, name: str, version: str) -> dict[str, Any]:
    """Metadata of one version (404 unless it is the serving one)."""
    return _metadata(_model(service, name, version))


@router.get("/models/{name}/ready", response_class=Response, responses=NO_BODY)
async def model_ready(service: ServiceDep, name: str) -> Response:
    """200 when the model serves, 400 when it is not loaded."""
    return _ready(service, name, None)


@router.get("/models/{name}/versions/{version}/ready", response_class=Response, responses=NO_BODY)
async def model_version_ready(service: ServiceDep, name: str, version: str) -> Response:
    """200 when that version serves."""
    return _ready(service, name, version)


def _ready(service: Service, name: str, version: str | None) -> Response:
    try:
        _model(service, name, version)
    except ProtocolError as exc:
        return error(400 if exc.status == 404 else exc.status, exc.message)
    return Response(status_code=200 if service.ready and not service.draining else 400)


# ---- infer ----


@keyed.post("/models/{name}/infer")
async def model_infer(request: Request, service: ServiceDep, name: str) -> Response:
    """Labels for ``image`` (UINT8 [N,H,W,3]) or ``image_bytes`` (BYTES [N]); JSON or binary tensors."""
    return await _admitted(request, service, name, None)


@keyed.post("/models/{name}/versions/{version}/infer")
async def model_version_infer(request: Request, service: ServiceDep, name: str, version: str) -> Response:
    """Infer on one version (404 unless it is the serving one)."""
    return await _admitted(request, service, name, version)


async def _admitted(request: Request, service: Service, name: str, version: str | None) -> Response:
    """Admission as for ``/segment`` (503 while loading or draining), then :func:`_infer`."""
    refusal = service.refusal()
    if refusal is not None:
        return error(503, *refusal)
    try:
        with service.admitted():
            return await _infer(request, service, name, version)
    except ProtocolError as exc:
        return error(exc.status, exc.message)


async def _infer(request: Request, service: Service, name: str, version: str | None) -> Response:
    assert service.registry is not None
    settings, metrics = service.settings, service.metrics
    _model(service, name, version)  # 404 before the body is read
    deadline = asyncio.get_running_loop().time() + settings.deadline_ms / 1000
    limits = BodyLimits(settings.max_body_bytes, settings.max_form_parts, settings.deadline_ms / 1000)
    with service.registry.hold(name, int(version) if version else None) as model:  # checked by _model
        try:
            body = await read_body(request, limits)
            parsed = parse_request(body, request.headers.get(HEADER_LENGTH.lower()), settings.max_batch_size)
            budget = Budget(time.monotonic() + settings.deadline_ms / 1000)
            prepared = await service.in_codec_thread(
                _prepare_rows, parsed, model, DecodeLimits.from_settings(settings), budget
            )
        except ClientGone:
            metrics.failures.labels("cancelled").inc()
            raise ProtocolError(499, "client closed the request during the upload") from None
        except (UploadError, ImageError) as exc:
            metrics.failures.labels("bad_input").inc()
            raise ProtocolError(status_of(exc), exc.detail) from None
        except DecodeStopped as exc:
            metrics.failures.labels("expired").inc()
            raise ProtocolError(status_of(exc), "the deadline passed while decoding the images") from None
        except ProtocolError:
            metrics.failures.labels("bad_input").inc()
            raise
        try:
            results = await infer(
                model, [p.padded for p in prepared], deadline, request.receive, settings, metrics
            )
        except Failure as failure:
            return error(failure.status, failure.detail, failure.headers)
        labels = await service.in_codec_thread(
            lambda: np.stack(
                [labels_at_upload_size(r.labels, p) for r, p in zip(results, prepared, strict=True)]
            )
        )
        body, headers = encode_response(model.name, model.version, parsed.id, labels, parsed.binary_outputs)
        headers |= {"X-Model": model.name, "X-Model-Version": str(model.version)}
        return Response(body, headers=headers)


def _prepare_rows(parsed: Any, model: ServedModel, limits: DecodeLimits, budget: Budget) -> list[Prepared]:
    """Each row resized and padded like an upload to /segment (encoded rows decoded within the same limits
    and the request's deadline); every row must have the same size."""
    if parsed.pixels is not None:
        height, width = parsed.pixels.shape[1:3]
        max_pixels = limits.max_pixels
        if height * width > max_pixels:
            raise ProtocolError(
                413, f"image is {width}x{height} = {height * width} pixels; the limit is {max_pixels}"
            )
        rows = [prepare_pixels(row, model.geometry, model.pad_colour) for row in parsed.pixels]
    else:
        rows = [prepare(data, model.geometry, model.pad_colour, limits, budget) for data in parsed.encoded]
    sizes = {row.original for row in rows}
    if len(sizes) > 1:
        raise ProtocolError(
            400, f"the images of one request must have one size (labels are one tensor); got {sorted(sizes)}"
        )
    return rows


# ---- repository extension ----


@keyed.post("/repository/index")
async def repository_index(service: ServiceDep) -> list[dict[str, Any]]:
    """Every model version in the repository with its state (READY / UNAVAILABLE and why)."""
    if service.registry is None:
        raise ProtocolError(503, "models are loading")
    return service.registry.index()


@keyed.post("/repository/models/{name}/load")
async def repository_load(request: Request, service: ServiceDep, name: str) -> Response:
    """Load (or reload) ``name``: the latest version on disk, or ``{"parameters": {"version": N}}``. The new
    version takes traffic only once warm; the one it replaces finishes its requests, then is unloaded."""
    if service.registry is None:
        raise ProtocolError(503, "models are loading")
    version = await _requested_version(request)
    try:
        model = await service.registry.load(name, version)
    except UnknownModel as exc:
        raise ProtocolError(404, str(exc)) from None
    except LoadError as exc:
        raise ProtocolError(400, str(exc)) from None
    return JSONResponse({"name": model.name, "version": str(model.version), "state": "READY"})


@keyed.post("/repository/models/{name}/unload")
async def repository_unload(service: ServiceDep, name: str) -> Response:
    """Stop serving ``name`` (new requests get 404 at once; accepted ones finish first)."""
    if service.registry is None:
        raise ProtocolError(503, "models are loading")
    try:
        version = await service.registry.unload(name)
    except UnknownModel as exc:
        raise ProtocolError(404, str(exc)) from None
    return JSONResponse({"name": name, "version": str(version), "state": "UNAVAILABLE"})


async def _requested_version(request: Request) -> int | None:
    body = await request.body()
    if not body.strip():
        return None
    try:
        version = ((await request.json()).get("parameters") or {}).get("version")
    except (ValueError, AttributeError):
        raise ProtocolError(400, 'the load body must be JSON like {"parameters": {"version": 2}}') from None
    if version is None:
        return None
    if isinstance(version, str) and VERSION.fullmatch(version):
        version = int(version)
    if not isinstance(version, int) or version < 1:
        raise ProtocolError(400, f"parameters.version must be a positive integer, got {version!r}")
    return version
