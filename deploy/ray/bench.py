"""Ray Serve measured against the plain server, side by side in one run on this machine.

    python -m deploy.ray.bench                       # both parts, table on stdout, JSON with --out
    python -m deploy.ray.bench --requests 120 --long-side 256

1. Overhead: ``python -m server`` and the Ray Serve application (one replica), same model and settings
   (1 instance x 1 thread, the project's batcher), closed loop at c=1 and c=16, levels alternating between
   the two so a busy phase of a shared machine hits both alike.
2. Batching inside a replica, at c=16 with raw image bodies, in alternating rounds: the application with
   the project's batcher (batches of up to 4), the same application without batching (batches of 1), and
   a minimal deployment that batches with Ray Serve's ``@serve.batch`` over the same backend, decode and
   encode (none of the app's middleware, metrics, limits or deadlines: a lower bound on its cost), and
   that same bare deployment without batching (what of its lead is batching, what is the bare path).

Loopback only; every level is bounded in requests and seconds. Local Ray without a dashboard, stopped at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from bench.http import closed_loop, free_port, log, server_process, summarize
from bench.images import encoded_photographs
from common.geometry import ServingGeometry
from deploy.ray.app import DEPLOYMENT, build
from server.backends.select import load_backend
from server.pipeline import MEDIA_TYPES, finish, prepare
from server.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS: dict[str, Any] = {
    "backend": "onnxruntime",
    "instances": 1,
    "threads_per_instance": 1,
    "max_batch_size": 4,
    "max_delay_ms": 2.0,
    "max_side": 256,
    "log_level": "warning",
}
"""Identical on both sides: the demo model, ONNX Runtime, one instance with one thread, batches of 4."""


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
class ServeBatched:
    """The same decode, forward and encode as ``POST /segment`` (raw image body, PNG out), batched by Ray
    Serve's ``@serve.batch`` instead of the project's batcher (nothing else of the app: a lower bound)."""

    def __init__(self, settings: Settings, batch: bool = True) -> None:
        self.settings, self.batch = settings, batch
        self.backend = load_backend(settings)
        meta = self.backend.metadata
        self.geometry = ServingGeometry(meta.geometry, settings.max_side, settings.bucket)
        self.pad = meta.normalization.neutral_rgb()

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.002)
    async def forward(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One forward pass per shape among the batch (only images of one bucket stack)."""
        out: list[np.ndarray | None] = [None] * len(images)
        for shape in {image.shape for image in images}:
            index = [i for i, image in enumerate(images) if image.shape == shape]
            labels = await asyncio.to_thread(self.backend.run, np.stack([images[i] for i in index]))
            for i, label in zip(index, labels, strict=True):
                out[i] = label
        return out  # type: ignore[return-value]

    async def __call__(self, request: Request) -> Response:
        data = await request.body()
        prepared = await asyncio.to_thread(prepare, data, self.geometry, self.pad, self.settings.max_pixels)
        if self.batch:
            labels = await self.forward(prepared.padded)
        else:
            labels = (await asyncio.to_thread(self.backend.run, prepared.padded[None]))[0]
        done = await asyncio.to_thread(finish, labels, prepared, "png", self.backend.metadata)
        return Response(done.body, media_type=MEDIA_TYPES["png"])


async def level(url: str, bodies: list, concurrency: int, requests: int, name: str, raw: bool) -> dict:
    """One closed-loop level (multipart like bench.http, or a raw image body for ServeBatched)."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        if raw:
            client.post = _raw_post(client.post)  # type: ignore[method-assign]
        result = await closed_loop(client, url, bodies, concurrency, requests, 300.0, "png")
    row = summarize(result, name, {})
    rate, p50 = row["throughput_rps"], row["p50_ms"]
    log(f"{name} c={concurrency}: {rate:.1f} req/s, p50 {p50:.0f} ms, errors {row['errors']}")
    return row


def _raw_post(post):
    """``client.post`` sending the multipart file's bytes as a raw ``image/*`` body instead."""

    async def raw(url: str, params: dict, files: dict) -> httpx.Response:
        _, data, content_type = files["image"]
        return await post(url, params=params, content=data, headers={"content-type": content_type})

    return raw


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| server | c | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for r in rows:
        name = r["server"] + (f" (round {r['round']})" if "round" in r else "")
        lines.append(
            f"| {name} | {r['concurrency']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {sum(r['errors'].values())} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]], a: str, b: str) -> dict[int, dict[str, float]]:
    """Per concurrency: b's throughput / a's, and b's p50 / a's."""
    out = {}
    for c in sorted({r["concurrency"] for r in rows}):
        ra = next((r for r in rows if r["server"] == a and r["concurrency"] == c), None)
        rb = next((r for r in rows if r["server"] == b and r["concurrency"] == c), None)
        if ra and rb:
            out[c] = {
                "throughput": round(rb["throughput_rps"] / ra["throughput_rps"], 3),
                "p50": round(rb["p50_ms"] / ra["p50_ms"], 3),
            }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.ray.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=160, help="requests per c=16 level (c=1: a quarter)")
    parser.add_argument("--long-side", type=int, default=256, help="photographs resized to this long side")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the batching comparison")
    parser.add_argument("--out", type=Path, help="write the rows and ratios as JSON here")
    args = parser.parse_args(argv)
    bodies = encoded_photographs(args.long_side)
    env = {f"FCN_{k.upper()}": str(v) for k, v in SETTINGS.items()} | {"OMP_NUM_THREADS": "1"}
    port = free_port()
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    rows: list[dict[str, Any]] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = {"min_replicas": 1, "max_replicas": 1, "num_cpus": 1, "settings": SETTINGS}
        serve.run(build(options), name=DEPLOYMENT, route_prefix="/")
        ray_url = f"http://127.0.0.1:{port}"
        log(f"Ray Serve ready at {ray_url}")
        with server_process(Path(Settings().model), SETTINGS["max_batch_size"], env, 120) as plain_url:
            for c, n in ((1, max(8, args.requests // 4)), (16, args.requests)):
                rows.append(asyncio.run(level(plain_url, bodies, c, n, "plain", raw=False)))
                rows.append(asyncio.run(level(ray_url, bodies, c, n, "ray-serve", raw=False)))
        serve.run(ServeBatched.bind(Settings(**SETTINGS)), name="batched", route_prefix="/batched")
        serve.run(ServeBatched.bind(Settings(**SETTINGS), False), name="bare", route_prefix="/bare")
        unbatched = {**options, "settings": {**SETTINGS, "max_batch_size": 1}}
        serve.run(build(unbatched), name="unbatched", route_prefix="/unbatched")
        variants = {
            "project batcher": ray_url,
            "no batching": f"{ray_url}/unbatched",
            "serve.batch": f"{ray_url}/batched",
            "bare, no batching": f"{ray_url}/bare",
        }
        for round_ in range(args.rounds):
            for name, url in variants.items():
                row = asyncio.run(level(url, bodies, 16, args.requests, name, raw=True))
                rows.append({**row, "part": "batching", "round": round_ + 1})
    finally:
        serve.shutdown()
        ray.shutdown()
    overhead = [r for r in rows if "part" not in r]
    batching = [r for r in rows if "part" in r]
    medians = {
        name: float(np.median([r["throughput_rps"] for r in batching if r["server"] == name]))
        for name in dict.fromkeys(r["server"] for r in batching)
    }
    report = {
        "settings": SETTINGS,
        "long_side": args.long_side,
        "rows": rows,
        "ray_vs_plain": ratios(overhead, "plain", "ray-serve"),
        "batching_median_rps": medians,
    }
    print("Overhead (same model, same settings, one run):\n" + table(overhead))
    print("ratios Ray Serve / plain:", json.dumps(report["ray_vs_plain"]))
    print(f"\nBatching inside one replica, c=16, {args.rounds} alternating rounds:\n" + table(batching))
    base = medians["project batcher"]
    print("median req/s:", ", ".join(f"{k} {v:.1f} ({v / base:.2f}x)" for k, v in medians.items()))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
