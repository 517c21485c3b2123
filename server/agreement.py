"""Measure how much shape-bucket padding changes labels: bucketed forward vs unpadded forward at own size.

    python -m server.agreement --model models/demo/fcn8s-demo.onnx --buckets 16 32 64 PHOTO.jpg ...

Each photo is used at its own size (long side capped at ``--max-side``) and rescaled to each
``--long-sides`` value; agreement = share of pixels whose label is equal in both forwards.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from server.app import neutral_colour
from server.backends.ort import OnnxRuntimeBackend
from server.batcher import bucket_shape, pad_to
from server.imaging import decode_image, inference_size, resize_rgb


def variants(photo: np.ndarray, max_side: int, long_sides: Sequence[int]) -> list[np.ndarray]:
    """The photo at its own size (capped) and rescaled to each long side."""
    out = [resize_rgb(photo, inference_size(*photo.shape[:2], max_side))]
    height, width = photo.shape[:2]
    for side in long_sides:
        scale = min(side, max_side) / max(height, width)
        out.append(resize_rgb(photo, (max(1, round(height * scale)), max(1, round(width * scale)))))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photos", nargs="+", type=Path, help="image files")
    parser.add_argument("--model", type=Path, required=True, help="deployable ONNX model")
    parser.add_argument("--buckets", type=int, nargs="+", default=[16, 32, 64], help="granularities to test")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--long-sides", type=int, nargs="*", default=[300, 375, 450, 500])
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)

    backend = OnnxRuntimeBackend(args.model, use_cuda=False, intra_op_threads=args.threads)
    fill = neutral_colour(backend.metadata.normalization)
    images = [
        v
        for p in args.photos
        for v in variants(decode_image(p.read_bytes(), 10**9), args.max_side, args.long_sides)
    ]
    print(f"{len(images)} images from {len(args.photos)} photos; model {backend.metadata.name}; pad {fill}")
    same = {g: 0 for g in args.buckets}
    padded_pixels = {g: 0 for g in args.buckets}
    worst = {g: 1.0 for g in args.buckets}
    total, start = 0, time.perf_counter()
    for index, image in enumerate(images, start=1):
        height, width = image.shape[:2]
        reference = backend.run(image[None])[0]
        total += height * width
        for granularity in args.buckets:
            shape = bucket_shape(height, width, granularity, args.max_side)
            labels = backend.run(pad_to(image, shape, fill)[None])[0, :height, :width]
            equal = int((labels == reference).sum())
            same[granularity] += equal
            worst[granularity] = min(worst[granularity], equal / (height * width))
            padded_pixels[granularity] += shape[0] * shape[1] - height * width
        print(f"  [{index}/{len(images)}] {height}x{width}", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s; {total} pixels")
    print("bucket  agreement  worst image  padding overhead")
    for granularity in args.buckets:
        agreement = 100 * same[granularity] / total
        overhead = 100 * padded_pixels[granularity] / total
        print(f"{granularity:6d}  {agreement:8.3f}%  {100 * worst[granularity]:10.3f}%  {overhead:6.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
