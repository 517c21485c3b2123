"""One-request latency of a running server next to the model's raw forward time on the same image.

    python -m server.latency --url http://127.0.0.1:8000 --model models/demo/fcn8s-demo.onnx PHOTO.jpg

Sends ``-n`` sequential requests (after a few warm-up ones) and times ``-n`` forwards of the model with
ONNX Runtime in this process at the size the server infers at (long side capped at ``--max-side``), both
unpadded and padded to the image's bucket.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from common.geometry import DEFAULT_GRANULARITY, DEFAULT_MAX_SIDE, ServingGeometry
from server.backends.ort import OnnxRuntimeBackend
from server.imaging import decode_image, resize_rgb


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    p50 = statistics.median(ordered)
    return f"p50 {p50 * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, min {ordered[0] * 1000:.1f} ms"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", type=Path, help="ONNX model for the raw forward (omit to skip it)")
    parser.add_argument("-n", type=int, default=100, help="requests and forwards to time")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="the server's max_side")
    parser.add_argument(
        "--bucket", type=int, default=DEFAULT_GRANULARITY, help="the server's bucket granularity"
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads of the forward")
    parser.add_argument("--format", choices=["png", "json"], default="png")
    args = parser.parse_args(argv)

    body = args.image.read_bytes()
    suffix = args.image.suffix.lower().lstrip(".")
    content_type = "image/jpeg" if suffix in ("jpg", "jpeg") else f"image/{suffix}"
    with httpx.Client(base_url=args.url, timeout=60) as client:
        samples, server_ms = [], []
        for index in range(args.n + 3):
            start = time.perf_counter()
            response = client.post(
                f"/segment?format={args.format}", content=body, headers={"content-type": content_type}
            )
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            if index >= 3:
                samples.append(elapsed)
                server_ms.append(float(response.headers["x-inference-ms"]))
    print(f"{args.image.name}: {args.n} sequential requests: {_percentiles(samples)}")
    print(f"  server-side inference (X-Inference-Ms) p50 {statistics.median(server_ms):.1f} ms")
    if args.model:
        backend = OnnxRuntimeBackend(args.model, use_cuda=False, intra_op_threads=args.threads)
        rgb = decode_image(body, 10**9)
        meta = backend.metadata
        geometry = ServingGeometry(meta.geometry, args.max_side, args.bucket)
        image = resize_rgb(rgb, geometry.inference_size(*rgb.shape[:2]))
        padded = geometry.pad(image, meta.normalization.neutral_rgb())
        for name, batch in (("own size", image[None]), ("bucket", padded[None])):
            for _ in range(3):
                backend.run(batch)
            forwards = []
            for _ in range(args.n):
                start = time.perf_counter()
                backend.run(batch)
                forwards.append(time.perf_counter() - start)
            size = f"{batch.shape[1]}x{batch.shape[2]}"
            print(f"  raw ONNX Runtime forward at the {name} {size}: {_percentiles(forwards)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
