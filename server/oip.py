"""The Open Inference Protocol (KServe v2) REST body: JSON tensors and the binary tensor data extension.

A request body is a JSON object, optionally followed by binary tensor data: ``Inference-Header-Content-
Length`` gives the JSON's length and each binary input says its ``binary_data_size``; tensors are
little-endian, row-major; a BYTES element is a 4-byte little-endian length and its bytes. Responses return
an output as binary when it asks ``"binary_data": true`` (or the request sets ``binary_data_output``).
Only what this service's models take is accepted: ``image`` (UINT8 ``[N, H, W, 3]``) or ``image_bytes``
(BYTES ``[N]``, encoded JPEG/PNG/...); the output is ``labels`` (UINT8 ``[N, H, W]``).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.contract import INPUT_NAME, LABELS_NAME

BYTES_INPUT = "image_bytes"
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUTS: dict[str, str] = {INPUT_NAME: "UINT8", BYTES_INPUT: "BYTES"}
"""Accepted inputs and their datatypes (one of them per request)."""
OUTPUTS: dict[str, str] = {LABELS_NAME: "UINT8"}


class ProtocolError(Exception):
    """A request the client must fix: ``status`` and the message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request: the images (decoded pixels or encoded files) and how to return outputs."""

    id: str | None
    pixels: np.ndarray | None
    """UINT8 ``[N, H, W, 3]`` for input ``image``."""
    encoded: list[bytes] | None
    """One encoded image per row for input ``image_bytes``."""
    binary_outputs: bool

    @property
    def rows(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.encoded or [])


def parse_request(body: bytes, header_length: str | None, max_rows: int) -> InferRequest:
    """Parse and check a request body; ProtocolError says what is wrong and what is accepted."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.isdigit():
            raise ProtocolError(400, f"{HEADER_LENGTH} must be a number of bytes, got {header_length!r}")
        length = int(header_length)
        if length > len(body):
            raise ProtocolError(
                400, f"{HEADER_LENGTH} is {length} bytes but the whole body is only {len(body)} bytes"
            )
        header, binary = body[:length], body[length:]
    try:
        request = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(
            400, f"the inference request header is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
        ) from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError(400, 'the request must be a JSON object with an "inputs" list')
    inputs = request["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(400, f"send exactly one input: {_accepted()}; got {len(inputs)}")
    tensor = inputs[0]
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if name not in INPUTS:
        raise ProtocolError(400, f"unknown input {name!r}; accepted: {_accepted()}")
    if datatype != INPUTS[name]:
        raise ProtocolError(400, f"input {name!r} must be {INPUTS[name]}, got datatype {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(400, f"input {name!r} needs a shape of non-negative integers, got {shape!r}")
    size = _binary_size(tensor)
    if size is not None and size != len(binary):
        raise ProtocolError(
            400, f"input {name!r} says binary_data_size {size} but {len(binary)} bytes follow the JSON header"
        )
    if size is None and binary:
        raise ProtocolError(
            400, f"{len(binary)} bytes follow the JSON header but no input has binary_data_size"
        )
    rows = shape[0] if shape else 0
    if rows < 1:
        raise ProtocolError(400, f"input {name!r} needs at least one row, got shape {shape}")
    if rows > max_rows:
        raise ProtocolError(413, f"{rows} rows in one request; the limit is {max_rows} (send more requests)")
    binary_outputs = _binary_outputs(request)
    if name == INPUT_NAME:
        return InferRequest(request.get("id"), _pixels(tensor, shape, binary, size), None, binary_outputs)
    return InferRequest(request.get("id"), None, _encoded(tensor, shape, binary, size), binary_outputs)


def _accepted() -> str:
    return f"'{INPUT_NAME}' UINT8 [N,H,W,3] or '{BYTES_INPUT}' BYTES [N] (encoded JPEG/PNG/WebP/...)"


def _binary_size(tensor: dict[str, Any]) -> int | None:
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or size < 0:
        raise ProtocolError(400, f"binary_data_size must be a non-negative integer, got {size!r}")
    return size


def _pixels(tensor: dict[str, Any], shape: list[int], binary: bytes, size: int | None) -> np.ndarray:
    if len(shape) != 4 or shape[3] != 3 or shape[1] < 1 or shape[2] < 1:
        raise ProtocolError(400, f"input '{INPUT_NAME}' must have shape [N, H, W, 3], got {shape}")
    needed = math.prod(shape)
    if size is not None:
        if size != needed:
            raise ProtocolError(
                400,
                f"input '{INPUT_NAME}' has binary_data_size {size} bytes "
                f"but shape {shape} of UINT8 needs {needed}",
            )
        return np.frombuffer(binary, dtype=np.uint8).reshape(shape)
    data = tensor.get("data")
    if data is None:
        raise ProtocolError(400, f"input '{INPUT_NAME}' has neither data nor binary_data_size")
    try:
        flat = np.asarray(data, dtype=np.int64).reshape(-1)
    except (ValueError, TypeError):
        raise ProtocolError(400, f"input '{INPUT_NAME}' data must be integers 0..255") from None
    if flat.size != needed:
        raise ProtocolError(
            400, f"input '{INPUT_NAME}' has {flat.size} values but shape {shape} needs {needed}"
        )
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise ProtocolError(400, f"input '{INPUT_NAME}' is UINT8: values must be 0..255")
    return flat.astype(np.uint8).reshape(shape)


def _encoded(tensor: dict[str, Any], shape: list[int], binary: bytes, size: int | None) -> list[bytes]:
    if len(shape) != 1:
        raise ProtocolError(400, f"input '{BYTES_INPUT}' must have shape [N], got {shape}")
    if size is None:
        raise ProtocolError(400, f"send '{BYTES_INPUT}' as binary data (parameters.binary_data_size)")
    items, offset = [], 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise ProtocolError(400, f"input '{BYTES_INPUT}' ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + length > len(binary):
            raise ProtocolError(
                400,
                f"input '{BYTES_INPUT}' element {len(items)} says {length} bytes, "
                f"only {len(binary) - offset} follow",
            )
        items.append(binary[offset : offset + length])
        offset += length
    if len(items) != shape[0]:
        raise ProtocolError(
            400, f"input '{BYTES_INPUT}' holds {len(items)} elements but its shape is {shape}"
        )
    return items


def _binary_outputs(request: dict[str, Any]) -> bool:
    """Whether ``labels`` goes back as binary data."""
    requested = request.get("outputs")
    if requested:
        for output in requested:
            if not isinstance(output, dict) or output.get("name") not in OUTPUTS:
                name = output.get("name") if isinstance(output, dict) else output
                raise ProtocolError(400, f"unknown output {name!r}; this model outputs {list(OUTPUTS)}")
        return any(bool((o.get("parameters") or {}).get("binary_data")) for o in requested)
    return bool((request.get("parameters") or {}).get("binary_data_output"))


def encode_response(
    model: str, version: int, request_id: str | None, labels: np.ndarray, binary: bool
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (``Inference-Header-Content-Length`` when binary follows)."""
    output: dict[str, Any] = {
        "name": LABELS_NAME,
        "datatype": OUTPUTS[LABELS_NAME],
        "shape": list(labels.shape),
    }
    raw = np.ascontiguousarray(labels, dtype=np.uint8).tobytes()
    if binary:
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = labels.reshape(-1).tolist()
    response: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": [output]}
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not binary:
        return header, {"Content-Type": "application/json"}
    return header + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
