"""Measure how much shape-bucket padding changes labels: bucketed forward vs unpadded forward at own size.

    python -m server.agreement --model models/demo/fcn8s-demo.onnx --buckets 16 32 64 PHOTO.jpg ...

Each photo is used at its own size (long side capped at ``--max-side``) and rescaled to each
``--long-sides`` value; agreement = share of pixels whose label is equal in both forwards.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.geometry import DEFAULT_MAX_SIDE, NetworkGeometry, ServingGeometry
from server.backends.base import Backend
from server.backends.ort import OnnxRuntimeBackend
from server.imaging import decode_image, resize_rgb


def variants(photo: np.ndarray, max_side: int, long_sides: Sequence[int]) -> list[np.ndarray]:
    """The photo at its own size (capped) and rescaled to each long side."""
    out = [resize_rgb(photo, ServingGeometry(NetworkGeometry(), max_side).inference_size(*photo.shape[:2]))]
    height, width = photo.shape[:2]
    for side in long_sides:
        scale = min(side, max_side) / max(height, width)
        out.append(resize_rgb(photo, (max(1, round(height * scale)), max(1, round(width * scale)))))
    return out


@dataclass
class Agreement:
    """Equal labels between bucketed and unpadded forwards, pooled over images."""

    equal: int = 0
    pixels: int = 0
    padded: int = 0
    worst: float = 1.0

    @property
    def share(self) -> float:
        return self.equal / self.pixels if self.pixels else 1.0


def measure(
    backend: Backend, images: Sequence[np.ndarray], granularities: Sequence[int], max_side: int
) -> dict[int, Agreement]:
    """For each granularity: labels of the padded-and-cropped forward vs the forward at the image's size."""
    meta = backend.metadata
    fill = meta.normalization.neutral_rgb()
    geometries = {g: ServingGeometry(meta.geometry, max_side, g) for g in granularities}
    results = {g: Agreement() for g in granularities}
    for index, image in enumerate(images, start=1):
        height, width = image.shape[:2]
        reference = backend.run(image[None])[0]
        for granularity, result in results.items():
            padded = geometries[granularity].pad(image, fill)
            labels = ServingGeometry.crop(backend.run(padded[None])[0], (height, width))
            shape = padded.shape[:2]
            equal = int((labels == reference).sum())
            result.equal += equal
            result.pixels += height * width
            result.padded += shape[0] * shape[1] - height * width
            result.worst = min(result.worst, equal / (height * width))
        print(f"  [{index}/{len(images)}] {height}x{width}", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photos", nargs="+", type=Path, help="image files")
    parser.add_argument("--model", type=Path, required=True, help="deployable ONNX model")
    parser.add_argument("--buckets", type=int, nargs="+", default=[16, 32, 64], help="granularities to test")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE)
    parser.add_argument("--long-sides", type=int, nargs="*", default=[300, 375, 450, 500])
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)

    backend = OnnxRuntimeBackend(args.model, use_cuda=False, intra_op_threads=args.threads)
    images = [
        v
        for p in args.photos
        for v in variants(decode_image(p.read_bytes(), 10**9), args.max_side, args.long_sides)
    ]
    print(f"{len(images)} images from {len(args.photos)} photos; model {backend.metadata.name}")
    start = time.perf_counter()
    results = measure(backend, images, args.buckets, args.max_side)
    print(f"done in {time.perf_counter() - start:.0f} s; {results[args.buckets[0]].pixels} pixels")
    print("bucket  agreement  worst image  padding overhead")
    for granularity, result in results.items():
        overhead = 100 * result.padded / result.pixels
        print(f"{granularity:6d}  {100 * result.share:8.3f}%  {100 * result.worst:10.3f}%  {overhead:6.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
