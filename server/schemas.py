"""Response bodies: the pydantic models that both document the API (``/openapi.json``) and serialise it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from server.upload import FIELD


class RLE(BaseModel):
    """COCO compressed run-length encoding of one class mask (decodes with ``pycocotools.mask``)."""

    size: list[int]
    counts: str


class ClassMask(BaseModel):
    """One class present in the label map."""

    id: int
    name: str
    pixels: int
    fraction: float
    rle: RLE


class Segmentation(BaseModel):
    """The ``format=json`` body of ``POST /segment``."""

    model: str
    width: int
    height: int
    classes: list[ClassMask]


class ErrorBody(BaseModel):
    """Every error of this service: what was wrong and what is accepted."""

    detail: str


def errors(body: type[BaseModel], statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses that all answer with ``body``."""
    return {code: {"model": body, "description": text} for code, text in statuses.items()}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
SEGMENT_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {FIELD: {"type": "string", "format": "binary"}},
                }
            },
            **{f"image/{kind}": _BINARY for kind in ("jpeg", "png", "webp", "bmp", "tiff", "gif")},
        },
    }
}
"""OpenAPI request body of ``POST /segment`` (the route reads the body itself, within its limits)."""

SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Segmentation,
        "content": {"image/png": _BINARY},
        "description": "label PNG or class-mask JSON",
    },
    **errors(
        ErrorBody,
        {
            400: "undecodable or truncated image",
            401: "missing or wrong API key",
            404: "no such model or version is loaded",
            408: "the body did not arrive within the deadline",
            413: "body over the byte limit or image over the pixel limit",
            415: "unsupported content type or image format",
            422: "bad parameters or multipart fields",
            429: "queue full (Retry-After says when to retry)",
            500: "the model failed on this request's batch",
            503: "not ready, draining, or queue full when so configured",
            504: "deadline passed before the result was ready",
        },
    ),
}


class ProtocolErrorBody(BaseModel):
    """Every error of the Open Inference Protocol routes."""

    error: str


V2_RESPONSES = errors(
    ProtocolErrorBody,
    {
        400: "bad tensor, header or request; or (readiness) not ready",
        401: "missing or wrong API key",
        404: "no such model or version is loaded (or exists)",
        408: "the body did not arrive within the deadline",
        413: "body, image or rows over the limits",
        415: "an encoded image in a format not accepted",
        429: "queue full or too many uploads (Retry-After)",
        500: "the model failed on this request's batch",
        503: "not ready or shutting down",
        504: "deadline passed",
    },
)
"""The statuses and error body of every ``/v2`` route (documented in ``/openapi.json``)."""
MODEL_INFO_RESPONSES = errors(
    ErrorBody,
    {
        401: "missing or wrong API key",
        404: "no such model or version is loaded",
        422: "bad parameters",
        503: "models are loading",
    },
)
NO_BODY: dict[int | str, dict[str, Any]] = {200: {"description": "true (no body)", "content": {}}}
"""A protocol health answer: the status is the answer."""
