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
from server.imaging import decode_for_inference, encode_label_png, resize_labels, resize_rgb
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
    """Thread CPU seconds of each step: ``decode``, ``resize``, ``pad``."""


def prepare(
    data: bytes, geometry: ServingGeometry, pad_colour: tuple[int, int, int], max_pixels: int
) -> Prepared:
    """Decode (limits, EXIF, RGB), resize to the inference size and pad to the bucket."""
    start = time.thread_time()
    rgb, original = decode_for_inference(data, max_pixels, geometry.max_side)
    return _fit(rgb, original, geometry, pad_colour, {"decode": time.thread_time() - start})


def prepare_pixels(rgb: np.ndarray, geometry: ServingGeometry, pad_colour: tuple[int, int, int]) -> Prepared:
    """An already decoded uint8 ``[H, W, 3]`` image, resized to the inference size and padded."""
    return _fit(rgb, (rgb.shape[0], rgb.shape[1]), geometry, pad_colour, {"decode": 0.0})


def _fit(
    rgb: np.ndarray,
    original: Shape,
    geometry: ServingGeometry,
    pad_colour: tuple[int, int, int],
    cpu: dict[str, float],
) -> Prepared:
    clock = time.thread_time
    decoded = clock()
    size = geometry.inference_size(*original)
    small = resize_rgb(rgb, size)
    resized = clock()
    padded = geometry.pad(small, pad_colour)
    cpu |= {"resize": resized - decoded, "pad": clock() - resized}
    return Prepared(padded, size, original, cpu)


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
