"""The image bytes of a request: raw ``image/*`` body or multipart field ``image``, with every body limit.

The limits live here and only here: the bytes of all bodies held at once (:class:`BodyBudget`), the
declared ``Content-Length``, the bytes actually streamed (chunked bodies included), the number of multipart
parts and the time the body may take. Failures raise :class:`UploadError` subclasses; the HTTP layer maps
them to status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from server.settings import SMALL_BODY_SHARE

FIELD = "image"
HOW = f"send multipart/form-data with one file field '{FIELD}', or the raw image with an image/* content type"
MAX_PART_HEADER_BYTES = 64 * 1024
"""Largest non-file multipart part (starlette's ``max_part_size``)."""


class UploadError(Exception):
    """A request body this service will not read; ``detail`` is one line for the client."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BodyTooLarge(UploadError):
    """More bytes than the body limit, declared or streamed."""


class UnsupportedMediaType(UploadError):
    """Neither ``image/*`` nor ``multipart/form-data``."""


class MalformedBody(UploadError):
    """An empty body or a multipart body that does not parse."""


class BadFormFields(UploadError):
    """A multipart body without exactly one file in the ``image`` field."""


class BodyTimeout(UploadError):
    """The body did not arrive within the request's deadline."""


class ClientGone(Exception):
    """The client closed the connection during the upload."""


class BodyBudget:
    """The request-body bytes held in memory at once, across all requests.

    Each upload reserves its declared ``Content-Length`` (a body without one: the per-request limit) before
    a byte of it is read, and gives it back once the image is decoded. An upload that does not fit is
    refused unread. The last ``1/SMALL_BODY_SHARE`` of the budget is kept for bodies no larger than that
    share, so a flood of large uploads cannot lock small requests out.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.small = limit // SMALL_BODY_SHARE
        self.held = 0

    @contextmanager
    def reserve(self, size: int) -> Iterator[bool]:
        """Hold ``size`` bytes for the ``with`` block; yields False (holding nothing) when they do not fit."""
        room = self.limit if size <= self.small else self.limit - self.small
        if self.held + size > room:
            yield False
            return
        self.held += size
        try:
            yield True
        finally:
            self.held -= size


def reserved_size(headers: Mapping[str, str], max_bytes: int) -> int:
    """The bytes a body may take: its valid ``Content-Length`` up to ``max_bytes``, else ``max_bytes``."""
    length = headers.get("content-length", "")
    return int(length) if length.isdigit() and int(length) <= max_bytes else max_bytes


@dataclass(frozen=True)
class BodyLimits:
    """How much of a body this service reads."""

    max_bytes: int
    max_parts: int
    timeout_s: float


async def limited(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass chunks through, failing with :class:`BodyTooLarge` the moment more than ``limit`` arrived."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        yield chunk


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Collect a streamed body of at most ``limit`` bytes."""
    return b"".join([chunk async for chunk in limited(chunks, limit)])


async def read_image_bytes(request: Request, limits: BodyLimits) -> bytes:
    """The uploaded file's bytes, read within ``limits``."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_bytes:
        raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {limits.max_bytes} bytes")
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not (media_type.startswith("image/") or media_type == "multipart/form-data"):
        raise UnsupportedMediaType(f"unsupported content type '{media_type or 'none'}': {HOW}")
    try:
        async with asyncio.timeout(limits.timeout_s):
            if media_type == "multipart/form-data":
                data = await _read_multipart(request, limits)
            else:
                data = await read_limited(request.stream(), limits.max_bytes)
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {limits.timeout_s * 1000:g} ms") from None
    except ClientDisconnect:
        raise ClientGone() from None
    if not data:
        raise MalformedBody(f"the image is empty: {HOW}")
    return data


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The whole body of any content type (an inference protocol request), read within ``limits``."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_bytes:
        raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {limits.max_bytes} bytes")
    try:
        async with asyncio.timeout(limits.timeout_s):
            return await read_limited(request.stream(), limits.max_bytes)
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {limits.timeout_s * 1000:g} ms") from None
    except ClientDisconnect:
        raise ClientGone() from None


async def _read_multipart(request: Request, limits: BodyLimits) -> bytes:
    parser = MultiPartParser(
        request.headers,
        limited(request.stream(), limits.max_bytes),
        max_files=limits.max_parts,
        max_fields=limits.max_parts,
        max_part_size=MAX_PART_HEADER_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise MalformedBody(f"invalid multipart body ({exc.message}): {HOW}") from None
    try:
        files = [(name, value) for name, value in form.multi_items() if isinstance(value, UploadFile)]
        images = [value for name, value in files if name == FIELD]
        if len(files) != 1 or len(images) != 1:
            names = [name for name, _ in files]
            raise BadFormFields(
                f"multipart body must hold exactly one file, in field '{FIELD}'; found {names}"
            )
        return await images[0].read()
    finally:
        await form.close()
