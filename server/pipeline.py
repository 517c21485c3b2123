"""The CPU work around one forward pass: image bytes → padded bucket (prepare), labels → body (finish).

Both run on the codec threads, never on the event loop. The geometry (inference size, bucket, pad,
crop) comes from the served model's :class:`~common.geometry.ServingGeometry`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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
    resize_rgb,
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
    cpu_s: dict[str, float] = field(default_factory=dict)
    """Thread CPU seconds of each step: ``decode`` (with the resize, for uploads) or ``resize``, ``pad``."""


def prepare(
    data: bytes,
    geometry: ServingGeometry,
    pad_colour: tuple[int, int, int],
    limits: DecodeLimits,
    budget: Budget = UNLIMITED,
) -> Prepared:
    """Decode within ``limits`` and ``budget`` (EXIF, RGB) at the inference size and pad to the bucket.

    ``cpu_s["decode"]`` includes the resize to the inference size, which decoding does itself (a large
    JPEG is decoded at a reduced DCT scale)."""
    start = time.thread_time()
    rgb, original = decode_for_inference(data, limits, geometry.inference_size, budget)
    decoded = time.thread_time()
    padded = geometry.pad(rgb, pad_colour)
    cpu = {"decode": decoded - start, "pad": time.thread_time() - decoded}
    return Prepared(padded, (rgb.shape[0], rgb.shape[1]), original, cpu)


def prepare_pixels(rgb: np.ndarray, geometry: ServingGeometry, pad_colour: tuple[int, int, int]) -> Prepared:
    """An already decoded uint8 ``[H, W, 3]`` image, resized to the inference size and padded."""
    start = time.thread_time()
    size = geometry.inference_size(rgb.shape[0], rgb.shape[1])
    small = resize_rgb(rgb, size)
    resized = time.thread_time()
    padded = geometry.pad(small, pad_colour)
    cpu = {"resize": resized - start, "pad": time.thread_time() - resized}
    return Prepared(padded, size, (rgb.shape[0], rgb.shape[1]), cpu)


def labels_at_upload_size(labels: np.ndarray, prepared: Prepared) -> np.ndarray:
    """Crop the bucket's labels and resize them to the upload's size."""
    return resize_labels(ServingGeometry.crop(labels, prepared.size), prepared.original)


@dataclass(frozen=True)
class Finished:
    """A response body and the thread CPU seconds of each step: ``crop`` (crop + resize back), ``encode``."""

    body: bytes
    cpu_s: dict[str, float]


def finish(labels: np.ndarray, prepared: Prepared, fmt: OutputFormat, meta: ModelMetadata) -> Finished:
    """Crop the bucket's labels, resize them to the upload's size and encode a label PNG or RLE JSON."""
    start = time.thread_time()
    full = labels_at_upload_size(labels, prepared)
    cropped = time.thread_time()
    body = encode(full, fmt, meta)
    return Finished(body, {"crop": cropped - start, "encode": time.thread_time() - cropped})


def encode(full: np.ndarray, fmt: OutputFormat, meta: ModelMetadata) -> bytes:
    """A label map as a palette PNG (pixel value = class index) or class-mask JSON (COCO RLE)."""
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
