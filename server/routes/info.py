"""``GET /v1/model``: what is being served and under which limits."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from server.errors import error_response
from server.imaging import ACCEPTED_TEXT
from server.routes.deps import ServiceDep, require_key

router = APIRouter(tags=["model"])


@router.get("/v1/model", dependencies=[Depends(require_key)])
async def model_info(service: ServiceDep) -> Response:
    """The model, backend and provider in use (and why it is a fallback), its classes and colours, input
    limits and batching."""
    if service.model is None:
        return error_response(503, "model is not loaded yet")
    settings, backend, meta = service.settings, service.model.backend, service.model.metadata
    geometry = service.model.geometry
    return JSONResponse(
        {
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
            "batching": {
                "max_batch_size": settings.max_batch_size,
                "max_delay_ms": settings.max_delay_ms,
                "queue_size": settings.queue_size,
                "deadline_ms": settings.deadline_ms,
                "bucket": settings.bucket,
            },
        }
    )
