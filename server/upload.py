"""The image bytes of a /segment request: raw ``image/*`` body or multipart field ``image``, size-limited."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from server.imaging import InputError, read_limited

FIELD = "image"
HOW = f"send multipart/form-data with one file field '{FIELD}', or the raw image with an image/* content type"


async def _limited(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass chunks through, failing with 413 the moment more than ``limit`` bytes arrived."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise InputError(413, f"request body exceeds the limit of {limit} bytes")
        yield chunk


async def read_image_bytes(request: Request, max_body_bytes: int, max_parts: int) -> bytes:
    """The uploaded file's bytes; InputError (413/415/400/422) for anything else."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body_bytes:
        raise InputError(413, f"request body of {length} bytes exceeds the limit of {max_body_bytes} bytes")
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type.startswith("image/"):
        data = await read_limited(request.stream(), max_body_bytes)
    elif media_type == "multipart/form-data":
        data = await _read_multipart(request, max_body_bytes, max_parts)
    else:
        shown = media_type or "none"
        raise InputError(415, f"unsupported content type '{shown}': {HOW}")
    if not data:
        raise InputError(400, f"the image is empty: {HOW}")
    return data


async def _read_multipart(request: Request, max_body_bytes: int, max_parts: int) -> bytes:
    parser = MultiPartParser(
        request.headers,
        _limited(request.stream(), max_body_bytes),
        max_files=max_parts,
        max_fields=max_parts,
        max_part_size=64 * 1024,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InputError(400, f"invalid multipart body ({exc.message}): {HOW}") from None
    try:
        files = [(name, value) for name, value in form.multi_items() if isinstance(value, UploadFile)]
        images = [value for name, value in files if name == FIELD]
        if len(files) != 1 or len(images) != 1:
            names = [name for name, _ in files]
            raise InputError(
                422, f"multipart body must hold exactly one file, in field '{FIELD}'; found {names}"
            )
        return await images[0].read()
    finally:
        await form.close()
