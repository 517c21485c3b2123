"""Dependencies every route shares: the app's :class:`~server.lifecycle.Service` and the API key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException

from server.lifecycle import Service

key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed when FCN_API_KEY is set")


def get_service(request: Request) -> Service:
    """The service the app was built around (``app.state.service``)."""
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[Service, Depends(get_service)]


def check_key(service: Service, given: str | None) -> None:
    """401 unless no key is configured or ``given`` equals it (constant-time comparison)."""
    expected = service.settings.api_key
    if expected is None:
        return
    if not given or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong API key: send it in the X-API-Key header")


def require_key(service: ServiceDep, given: Annotated[str | None, Depends(key_header)]) -> None:
    """The API key, when ``FCN_API_KEY`` is set."""
    check_key(service, given)


def require_metrics_key(service: ServiceDep, given: Annotated[str | None, Depends(key_header)]) -> None:
    """The API key on /metrics, when ``FCN_METRICS_NEED_KEY`` is also set."""
    if service.settings.metrics_need_key:
        check_key(service, given)
