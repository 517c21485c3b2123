"""Caffe ``.caffemodel`` files without Caffe: a protobuf wire-format reader and the FCN layer mapping.

A ``.caffemodel`` is a serialised ``caffe.NetParameter``. The fields read here (BVLC/caffe
``src/caffe/proto/caffe.proto``; everything else is skipped):

- ``NetParameter``: ``name = 1``, ``layer = 100`` (``LayerParameter``), legacy ``layers = 2``
  (``V1LayerParameter``)
- ``LayerParameter``: ``name = 1``, ``type = 2`` (string), ``blobs = 7``
- ``V1LayerParameter``: ``name = 4``, ``type = 5`` (enum), ``blobs = 6``
- ``BlobProto``: legacy 4-D shape ``num = 1, channels = 2, height = 3, width = 4``, ``data = 5`` (float),
  ``shape = 7`` (``BlobShape``: ``dim = 1``, int64), ``double_data = 8`` (double)

Repeated numbers are read packed or unpacked. The reference nets' layer names equal this project's module
names, so blob 0 of layer ``L`` becomes ``L.weight`` and blob 1 ``L.bias``. Caffe's ``Convolution``
weights are ``(out, in, kh, kw)`` like ``nn.Conv2d``; ``Deconvolution`` weights are ``(in, out / group,
kh, kw)`` like ``nn.ConvTranspose2d`` (the upscore layers have no bias), so both copy without transposing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from training.model import VGG_STAGES, FCNBase, build_model
from training.weights import CheckpointError, check_state_dict

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5

V1_LAYER_TYPES = {4: "Convolution", 39: "Deconvolution", 14: "InnerProduct", 17: "Pooling", 18: "ReLU"}
"""Names of some ``V1LayerParameter.LayerType`` values (for messages; others show as numbers)."""

AT_ONCE_SCALES = {"scale_pool4": 0.01, "scale_pool3": 0.0001}
"""The fixed ``Scale`` layers of ``voc-fcn8s-atonce``; ``FCN8sAtOnce`` hard-codes these factors."""


class CaffeModelError(CheckpointError):
    """A file that is not a readable ``.caffemodel`` or does not hold the expected FCN layers."""


@dataclass(frozen=True)
class Blob:
    """One parameter blob: its shape and float32 values."""

    shape: tuple[int, ...]
    legacy_shape: bool
    """True when the shape came from the deprecated num/channels/height/width fields (always 4-D)."""
    data: np.ndarray

    def fits(self, target: tuple[int, ...]) -> bool:
        """Whether the blob fits a tensor of ``target`` shape (a legacy 4-D shape is 1-padded in front)."""
        if not self.legacy_shape or len(target) >= 4:
            return self.shape == target
        lead = len(self.shape) - len(target)
        return all(d == 1 for d in self.shape[:lead]) and self.shape[lead:] == target


@dataclass(frozen=True)
class CaffeLayer:
    """A layer of the net and its parameter blobs (none for ReLU, pooling, crop, loss ...)."""

    name: str
    type: str
    blobs: tuple[Blob, ...]


# --------------------------------------------------------------------------------------------------
# Protobuf wire format


@dataclass(frozen=True)
class _Field:
    number: int
    wire: int
    value: int
    """The number of a varint field; for the other wire types, ``start`` and ``stop`` delimit the bytes."""
    start: int
    stop: int


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise CaffeModelError(f"truncated protobuf: a number runs past byte {end}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise CaffeModelError(f"malformed protobuf: a number longer than 10 bytes at byte {pos}")


def _fields(buf: memoryview, start: int, end: int) -> Iterator[_Field]:
    """The fields of the message in ``buf[start:end]``; raises CaffeModelError on truncation or garbage."""
    pos = start
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CaffeModelError(f"not a protobuf message: field number 0 at byte {at}")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield _Field(number, wire, value, at, pos)
            continue
        if wire == _BYTES:
            length, pos = _varint(buf, pos, end)
        elif wire in (_FIXED32, _FIXED64):
            length = 4 if wire == _FIXED32 else 8
        else:
            raise CaffeModelError(f"not a Caffe protobuf: wire type {wire} of field {number} at byte {at}")
        if pos + length > end:
            raise CaffeModelError(
                f"truncated protobuf: field {number} at byte {at} needs {length} bytes, {end - pos} are left"
            )
        yield _Field(number, wire, 0, pos, pos + length)
        pos += length


def _text(buf: memoryview, field: _Field) -> str:
    return bytes(buf[field.start : field.stop]).decode("utf-8", errors="replace")


def _numbers(buf: memoryview, field: _Field, dtype: str) -> np.ndarray:
    """The values of a packed field, or the one value of an unpacked one, as float32."""
    raw = buf[field.start : field.stop]
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise CaffeModelError(f"malformed blob: {len(raw)} bytes of {dtype} values at byte {field.start}")
    return np.frombuffer(raw, dtype=dtype).astype(np.float32)


def _dims(buf: memoryview, field: _Field) -> list[int]:
    """``BlobShape.dim`` values (packed or unpacked varints)."""
    dims: list[int] = []
    for dim in _fields(buf, field.start, field.stop):
        if dim.number != 1:
            continue
        if dim.wire == _VARINT:
            dims.append(dim.value)
        elif dim.wire == _BYTES:
            pos = dim.start
            while pos < dim.stop:
                value, pos = _varint(buf, pos, dim.stop)
                dims.append(value)
    return dims


def _blob(buf: memoryview, start: int, stop: int, where: str) -> Blob:
    legacy: dict[int, int] = {}
    shape: list[int] | None = None
    chunks: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for field in _fields(buf, start, stop):
        if field.number in (1, 2, 3, 4) and field.wire == _VARINT:
            legacy[field.number] = field.value
        elif field.number == 7 and field.wire == _BYTES:
            shape = _dims(buf, field)
        elif field.number == 5 and field.wire in (_BYTES, _FIXED32):
            chunks.append(_numbers(buf, field, "<f4"))
        elif field.number == 8 and field.wire in (_BYTES, _FIXED64):
            doubles.append(_numbers(buf, field, "<f8"))
    if shape is None and legacy:
        dims, is_legacy = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4)), True
    else:
        dims, is_legacy = tuple(shape or ()), False
    parts = chunks or doubles
    data = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else np.zeros(0, np.float32))
    expected = int(np.prod(dims)) if dims else 0
    if data.size != expected:
        raise CaffeModelError(f"{where}: {data.size} values for the shape {list(dims)} ({expected} values)")
    return Blob(dims, is_legacy, data)


def _layer(buf: memoryview, start: int, stop: int, v1: bool) -> CaffeLayer:
    name_field, type_field, blobs_field = (4, 5, 6) if v1 else (1, 2, 7)
    name, kind = "", ""
    blob_ranges: list[tuple[int, int]] = []
    for field in _fields(buf, start, stop):
        if field.number == name_field and field.wire == _BYTES:
            name = _text(buf, field)
        elif field.number == type_field:
            if v1 and field.wire == _VARINT:
                kind = V1_LAYER_TYPES.get(field.value, f"V1 type {field.value}")
            elif field.wire == _BYTES:
                kind = _text(buf, field)
        elif field.number == blobs_field and field.wire == _BYTES:
            blob_ranges.append((field.start, field.stop))
    blobs = tuple(_blob(buf, a, b, f"layer {name or '?'} blob {i}") for i, (a, b) in enumerate(blob_ranges))
    return CaffeLayer(name, kind, blobs)


def parse_net(data: bytes) -> tuple[str, list[CaffeLayer]]:
    """The net's name and its layers (``layer`` and legacy ``layers`` entries, in file order)."""
    buf = memoryview(data)
    name = ""
    layers: list[CaffeLayer] = []
    for field in _fields(buf, 0, len(buf)):
        if field.number == 1 and field.wire == _BYTES:
            name = _text(buf, field)
        elif field.number in (100, 2) and field.wire == _BYTES:
            layers.append(_layer(buf, field.start, field.stop, v1=field.number == 2))
    return name, layers


def read_caffemodel(path: Path) -> tuple[str, list[CaffeLayer]]:
    """Parse a ``.caffemodel`` file; raises CaffeModelError naming the file if it is not one."""
    path = Path(path)
    try:
        name, layers = parse_net(path.read_bytes())
    except CaffeModelError as error:
        raise CaffeModelError(f"{path}: {error}") from None
    if not any(layer.blobs for layer in layers):
        raise CaffeModelError(f"{path}: no layer with parameters; not a trained .caffemodel")
    return name, layers


# --------------------------------------------------------------------------------------------------
# Reference layers -> this project's modules


def infer_architecture(layers: Mapping[str, CaffeLayer]) -> str:
    """FCN variant from the layers with blobs: the final upsampling layer, and the at-once skip scales."""
    if "upscore8" in layers:
        return "fcn8s-atonce" if "scale_pool4" in layers else "fcn8s"
    if "upscore16" in layers:
        return "fcn16s"
    if "upscore" in layers:
        return "fcn32s"
    raise CaffeModelError("cannot tell the FCN variant: none of upscore8, upscore16, upscore is in the file")


def _size(layers: Mapping[str, CaffeLayer], name: str, what: str) -> int:
    if name not in layers or not layers[name].blobs or not layers[name].blobs[0].shape:
        raise CaffeModelError(f"missing layers: {name} (cannot infer the {what})")
    return layers[name].blobs[0].shape[0]


def _check_scales(layers: Mapping[str, CaffeLayer]) -> list[str]:
    problems = []
    for name, factor in AT_ONCE_SCALES.items():
        values = np.concatenate([b.data for b in layers[name].blobs]) if layers[name].blobs else np.zeros(0)
        if values.size == 0 or not np.allclose(values, factor, rtol=1e-6, atol=0.0):
            found = f"{values.min():.6g}..{values.max():.6g}" if values.size else "no values"
            problems.append(f"{name} holds {found}, FCN8sAtOnce hard-codes {factor}")
    return problems


def state_dict_from_layers(
    layers: list[CaffeLayer], architecture: str | None = None
) -> tuple[str, dict[str, Tensor]]:
    """The architecture and a state dict of ``build_model(architecture, ...)`` from the Caffe layers.

    Every layer and blob shape is checked; raises CaffeModelError naming the missing and unexpected layers,
    wrong blob counts and mismatched shapes.
    """
    by_name = {layer.name: layer for layer in layers if layer.blobs}
    architecture = architecture or infer_architecture(by_name)
    num_classes = _size(by_name, "score_fr", "number of classes")
    channels = _size(by_name, "conv1_1", "network width")
    width = channels / VGG_STAGES[0][0]
    if not 0 < width <= 1:
        raise CaffeModelError(f"conv1_1 has {channels} outputs; this project's nets have at most 64")
    with torch.device("meta"):
        target = dict(build_model(architecture, num_classes, width).state_dict())
    expected: dict[str, list[str]] = {}
    for key in target:
        layer, kind = key.rsplit(".", 1)
        expected.setdefault(layer, []).append(kind)
    extra = set(AT_ONCE_SCALES) if architecture == "fcn8s-atonce" else set()
    missing = sorted((set(expected) | extra) - set(by_name))
    unexpected = sorted(set(by_name) - set(expected) - extra)
    problems = []
    if missing:
        problems.append(f"missing layers: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected layers: {', '.join(unexpected)}")
    state: dict[str, Tensor] = {}
    for name, kinds in expected.items():
        if name not in by_name:
            continue
        blobs = by_name[name].blobs
        if len(blobs) != len(kinds):
            problems.append(f"{name} has {len(blobs)} blobs, expected {len(kinds)} ({', '.join(kinds)})")
            continue
        for kind, blob in zip(kinds, blobs, strict=True):
            shape = tuple(target[f"{name}.{kind}"].shape)
            if not blob.fits(shape):
                problems.append(f"{name}.{kind}: file {blob.shape} vs model {shape}")
            else:
                state[f"{name}.{kind}"] = torch.from_numpy(blob.data.reshape(shape).copy())
    if extra and not missing:
        problems += _check_scales(by_name)
    if problems:
        raise CaffeModelError(f"not a {architecture} net — " + " | ".join(problems))
    check_state_dict(target, state, what=f"converted {architecture}")
    return architecture, state


def load_caffemodel(path: Path, architecture: str | None = None) -> FCNBase:
    """Build the model (eval mode) holding the weights of a ``.caffemodel``; the architecture is checked."""
    _, layers = read_caffemodel(path)
    try:
        architecture, state = state_dict_from_layers(layers, architecture)
    except CaffeModelError as error:
        raise CaffeModelError(f"{path}: {error}") from None
    num_classes = state["score_fr.weight"].shape[0]
    width = state["conv1_1.weight"].shape[0] / VGG_STAGES[0][0]
    with torch.device("meta"):
        model = build_model(architecture, num_classes, width)
    model.load_state_dict(state, assign=True)
    return model.eval()
