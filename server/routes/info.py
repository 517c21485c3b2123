"""``GET /v1/model``: what is being served and under which limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response

from server.errors import error_response
from server.imaging import ACCEPTED_TEXT
from server.registry import UnknownModel
from server.routes.deps import ServiceDep, require_key
from server.schemas import MODEL_INFO_RESPONSES

router = APIRouter(tags=["model"])


@router.get("/v1/models", dependencies=[Depends(require_key)], responses=MODEL_INFO_RESPONSES)
async def models(service: ServiceDep) -> Response:
    """The models being served (name, version, title) and which one answers requests that name none."""
    if service.registry is None:
        return error_response(503, "models are not loaded yet")
    registry = service.registry
    loaded = [
        {
            "model": m.name,
            "version": m.version,
            "name": m.metadata.name,
            "architecture": m.metadata.architecture,
        }
        for m in registry.loaded()
    ]
    return JSONResponse({"default": registry.default_name, "models": loaded})


@router.get("/v1/model", dependencies=[Depends(require_key)], responses=MODEL_INFO_RESPONSES)
async def model_info(
    service: ServiceDep,
    model: Annotated[str | None, Query(description="model name (default: the default model)")] = None,
    version: Annotated[int | None, Query(ge=1, description="version (default: the serving one)")] = None,
) -> Response:
    """The model, backend and provider in use (and why it is a fallback), its classes and colours, input
    limits and batching."""
    if service.registry is None:
        return error_response(503, "model is not loaded yet")
    try:
        served = service.registry.get(model, version)
    except UnknownModel as exc:
        return error_response(404, str(exc))
    settings, backend, meta, geometry = service.settings, served.backend, served.metadata, served.geometry
    return JSONResponse(
        {
            "model": served.name,
            "version": served.version,
            "name": meta.name,
            "architecture": meta.architecture,
            "width": meta.width,
            "backend": backend.name,
            "provider": backend.provider,
            "precision": backend.precision,
            "fallback": [reason.to_dict() for reason in backend.fallback],
            "classes": [
                {"id": i, "name": name, "color": list(meta.palette[i])} for i, name in enumerate(meta.classes)
            ],
            "normalization": meta.to_dict()["normalization"],
            "metrics": meta.metrics,
            "geometry": {
                **meta.geometry.to_dict(),
                "bucket_sides": [geometry.sides[0], geometry.sides[-1]],
                "buckets": len(geometry.buckets()),
            },
            "limits": {
                "max_body_bytes": settings.max_body_bytes,
                "max_pixels": settings.max_pixels,
                "max_side": settings.max_side,
                "formats": ACCEPTED_TEXT,
            },
            "execution": served.execution(),
            "batching": {
                "max_batch_size": served.batcher.max_batch_size,
                "max_delay_ms": settings.max_delay_ms,
                "queue_size": settings.queue_size,
                "deadline_ms": settings.deadline_ms,
                "bucket": settings.bucket,
            },
        }
    )
