"""The CPU work around one forward pass: image bytes → padded bucket (prepare), labels → body (finish).

Both run on the codec threads, never on the event loop. The geometry (inference size, bucket, pad,
crop) comes from the served model's :class:`~common.geometry.ServingGeometry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from common.geometry import ServingGeometry, Shape
from common.metadata import ModelMetadata
from server.imaging import (
    UNLIMITED,
    Budget,
    DecodeLimits,
    decode_for_inference,
    encode_label_png,
    resize_labels,
)
from server.masks import class_rles
from server.schemas import RLE, ClassMask, Segmentation

OutputFormat = Literal["png", "json"]
MEDIA_TYPES: dict[OutputFormat, str] = {"png": "image/png", "json": "application/json"}


@dataclass(frozen=True)
class Prepared:
    """An upload ready for the batcher: pixels padded to the bucket, the inference and original sizes."""

    padded: np.ndarray
    size: Shape
    original: Shape


def prepare(
    data: bytes,
    geometry: ServingGeometry,
    pad_colour: tuple[int, int, int],
    limits: DecodeLimits,
    budget: Budget = UNLIMITED,
) -> Prepared:
    """Decode within ``limits`` and ``budget`` (EXIF, RGB) at the inference size and pad to the bucket."""
    rgb, original = decode_for_inference(data, limits, geometry.inference_size, budget)
    return Prepared(geometry.pad(rgb, pad_colour), (rgb.shape[0], rgb.shape[1]), original)


def finish(labels: np.ndarray, prepared: Prepared, fmt: OutputFormat, meta: ModelMetadata) -> bytes:
    """Crop the bucket's labels, resize them to the upload's size and encode a label PNG or RLE JSON."""
    full = resize_labels(ServingGeometry.crop(labels, prepared.size), prepared.original)
    if fmt == "png":
        return encode_label_png(full, meta.palette)
    height, width = full.shape
    classes = [
        ClassMask(
            id=cls,
            name=meta.classes[cls] if cls < len(meta.classes) else f"class_{cls}",
            pixels=pixels,
            fraction=pixels / (height * width),
            rle=RLE.model_validate(rle),
        )
        for cls, (pixels, rle) in sorted(class_rles(full).items())
    ]
    body = Segmentation(model=meta.name, width=width, height=height, classes=classes)
    return body.model_dump_json().encode()
