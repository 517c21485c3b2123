"""Do the servers return the labels ONNX Runtime FP32 computes? Reference labels and per-server agreement.

The reference for each request body is what the service's own pipeline gives with the FP32 deployable graph
in ONNX Runtime, in this process: ``server.pipeline.prepare`` (decode, resize to the inference size, pad to
the bucket), one forward pass at batch 1, crop, resize back to the upload's size. Every response a server
returned (PNG) is decoded and compared with the reference of its image, pixel by pixel.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.contract import INPUT_NAME
from common.geometry import ServingGeometry
from common.onnxrt import create_session, read_metadata


def reference_labels(
    model: Path, bodies: Sequence[bytes], geometry: ServingGeometry, max_pixels: int
) -> list[np.ndarray]:
    """ORT FP32 labels of each encoded image, at the upload's size, computed as the service computes them."""
    from server.imaging import resize_labels
    from server.pipeline import prepare

    metadata = read_metadata(model)[0]
    session = create_session(model)
    references = []
    for data in bodies:
        prepared = prepare(data, geometry, metadata.normalization.neutral_rgb(), max_pixels)
        labels = session.run(None, {INPUT_NAME: prepared.padded[None]})[0][0]
        references.append(resize_labels(ServingGeometry.crop(labels, prepared.size), prepared.original))
    return references


def png_labels(body: bytes) -> np.ndarray:
    """The class indices of a palette PNG (pixel value = class)."""
    image = Image.open(io.BytesIO(body))
    if image.mode != "P":
        raise ValueError(f"expected a palette PNG, got mode {image.mode}")
    return np.asarray(image, dtype=np.uint8)


def digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


@dataclass
class Responses:
    """The distinct bodies one server returned for each image, and how often (filled during the sweep)."""

    counts: Counter[tuple[int, str]] = field(default_factory=Counter)
    bodies: dict[str, bytes] = field(default_factory=dict)

    def add(self, image: int, body: bytes) -> None:
        key = digest(body)
        self.bodies.setdefault(key, body)
        self.counts[image, key] += 1


def agreement(responses: Responses, references: Sequence[np.ndarray]) -> dict[str, Any]:
    """Share of equal pixels over all responses (each weighted by its count), the worst response, and the
    share of responses identical to the reference."""
    total = equal = identical = 0
    worst = 1.0
    for (image, key), count in responses.counts.items():
        expected = references[image]
        try:
            got = png_labels(responses.bodies[key])
        except (OSError, ValueError):
            share = 0.0
        else:
            share = float((got == expected).mean()) if got.shape == expected.shape else 0.0
        total += count
        equal += share * count
        identical += count if share == 1.0 else 0
        worst = min(worst, share)
    if total == 0:
        return {"responses": 0, "agreement": None, "worst": None, "identical_share": None}
    return {
        "responses": total,
        "agreement": equal / total,
        "worst": worst,
        "identical_share": identical / total,
    }


def agreements(
    responses: Mapping[str, Responses], references: Sequence[np.ndarray]
) -> dict[str, dict[str, Any]]:
    """:func:`agreement` of every server."""
    return {server: agreement(found, references) for server, found in responses.items()}
