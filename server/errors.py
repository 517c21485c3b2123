"""One table from the domain's exceptions to HTTP status codes, and the JSON error body every route uses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from server.batcher import DeadlineError, InferenceError, QueueFullError, ShuttingDownError
from server.imaging import (
    DecodeCancelled,
    DecodeDeadline,
    ImageTooLarge,
    UndecodableImage,
    UnsupportedImageFormat,
)
from server.upload import (
    BadFormFields,
    BodyTimeout,
    BodyTooLarge,
    ClientGone,
    MalformedBody,
    UnsupportedMediaType,
)

log = logging.getLogger("server")

CLIENT_CLOSED = 499
"""nginx's status for a request whose client went away (logged and counted, never received)."""

STATUS: dict[type[Exception], int] = {
    UndecodableImage: 400,
    MalformedBody: 400,
    BodyTimeout: 408,
    ImageTooLarge: 413,
    BodyTooLarge: 413,
    UnsupportedImageFormat: 415,
    UnsupportedMediaType: 415,
    BadFormFields: 422,
    QueueFullError: 429,
    ClientGone: CLIENT_CLOSED,
    DecodeCancelled: CLIENT_CLOSED,
    InferenceError: 500,
    ShuttingDownError: 503,
    DeadlineError: 504,
    DecodeDeadline: 504,
}
"""Status code of each domain exception (``FCN_QUEUE_FULL_STATUS`` may turn 429 into 503)."""


def status_of(exc: Exception) -> int:
    """The status code of a domain exception (its nearest class in :data:`STATUS`), else 500."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"detail": ...}`` with ``status``."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request parameters: " + "; ".join(parts) + " (format accepts png or json)"


def install_handlers(app: FastAPI) -> None:
    """Answer invalid parameters with 422 and any unexpected exception with a JSON 500."""

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_detail(exc))

    @app.exception_handler(Exception)
    async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__})")
