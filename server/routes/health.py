"""Liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from server.errors import error_response
from server.routes.deps import ServiceDep, require_metrics_key
from server.schemas import ErrorBody

router = APIRouter(tags=["health"])


@router.get("/health/live")
async def live() -> dict[str, str]:
    """200 while the process serves HTTP."""
    return {"status": "alive"}


@router.get("/health/ready", responses={503: {"model": ErrorBody}})
async def ready(service: ServiceDep) -> Response:
    """200 once the model is loaded and warmed up; 503 before, while draining, or when stalled."""
    reason = service.not_ready_reason()
    if reason is not None:
        return error_response(503, reason)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", dependencies=[Depends(require_metrics_key)], response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text exposition."""
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
