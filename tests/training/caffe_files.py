"""Synthetic ``.caffemodel`` files: a tiny protobuf encoder and FCN nets with the reference layer names.

Field numbers are caffe.proto's (see training/caffemodel.py); the layer list follows the reference
``voc-fcn*/train.prototxt`` (layers without parameters carry no blobs).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np
import torch

from training.model import build_model

V1_TYPES = {"Convolution": 4, "Deconvolution": 39, "ReLU": 18, "Pooling": 17, "Dropout": 6}


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def number(field_number: int, value: int) -> bytes:
    """A varint field (wire type 0)."""
    return varint(field_number << 3) + varint(value)


def blob(array: np.ndarray, *, legacy: bool = False, packed: bool = True, double: bool = False) -> bytes:
    """A BlobProto: ``shape`` (or legacy num/channels/height/width) and ``data`` (or ``double_data``)."""
    values = np.asarray(array).ravel()
    if legacy:
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        out = b"".join(number(i, d) for i, d in enumerate(dims, start=1))
    else:
        out = field(7, field(1, b"".join(varint(d) for d in array.shape)))
    if double:
        return out + field(8, values.astype("<f8").tobytes())
    if packed:
        return out + field(5, values.astype("<f4").tobytes())
    return out + b"".join(varint(5 << 3 | 5) + struct.pack("<f", v) for v in values)


def layer(name: str, kind: str, blobs: list[bytes], *, v1: bool = False) -> bytes:
    """A LayerParameter (name 1, type 2, blobs 7) or V1LayerParameter (name 4, type enum 5, blobs 6)."""
    if v1:
        return field(4, name.encode()) + number(5, V1_TYPES[kind]) + b"".join(field(6, b) for b in blobs)
    return field(1, name.encode()) + field(2, kind.encode()) + b"".join(field(7, b) for b in blobs)


def net(name: str, layers: list[bytes], *, v1: bool = False) -> bytes:
    """A NetParameter: name 1, then ``layer`` (100) or legacy ``layers`` (2) entries."""
    return field(1, name.encode()) + b"".join(field(2 if v1 else 100, entry) for entry in layers)


def random_state(architecture: str, width: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the model's keys and shapes: He-scaled (so the labels vary), biases small."""
    reference = build_model(architecture, 21, width)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in reference.state_dict().items():
        scale = (2 / value[0].numel()) ** 0.5 if key.endswith("weight") else 0.1
        state[key] = torch.randn(value.shape, generator=generator) * scale
    return state


def fcn_caffemodel(
    state: Mapping[str, torch.Tensor],
    *,
    v1: bool = False,
    legacy_shapes: bool = False,
    packed: bool = True,
    at_once_scales: Mapping[str, float] | None = None,
    drop: tuple[str, ...] = (),
) -> bytes:
    """A .caffemodel of ``state``: the trunk's layers in order (with blob-free ReLU/pool/dropout layers),
    the head's score/upscore layers, optional at-once ``Scale`` layers; layers in ``drop`` left out."""
    layers = [layer("data", "Python", [])] if not v1 else []
    names = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in state))
    scales = dict(at_once_scales or {})
    for name in names:
        if name in drop:
            continue
        scale = name.replace("score_", "scale_")
        if scale in scales:  # Scale(pool) feeds score_pool4 / score_pool3 in voc-fcn8s-atonce
            values = np.full(state[f"{name}.weight"].shape[1], scales[scale])
            layers.append(layer(scale, "Scale", [blob(values)], v1=v1))
        kind = "Deconvolution" if name.startswith("upscore") else "Convolution"
        tensors = [state[f"{name}.weight"]] + ([state[f"{name}.bias"]] if f"{name}.bias" in state else [])
        blobs = [blob(t.numpy(), legacy=legacy_shapes, packed=packed) for t in tensors]
        layers.append(layer(name, kind, blobs, v1=v1))
        if name.startswith(("conv", "fc")):
            layers.append(layer(f"relu{name.removeprefix('conv').removeprefix('fc')}", "ReLU", [], v1=v1))
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            layers.append(layer(f"pool{name[4]}", "Pooling", [], v1=v1))
        if name in ("fc6", "fc7"):
            layers.append(layer(f"drop{name[2]}", "Dropout", [], v1=v1))
    return net("voc-fcn", layers, v1=v1)
