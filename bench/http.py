"""Load generator for the segmentation service: closed-loop concurrency sweep and open-loop constant rate.

    python -m bench.http --model models/demo/fcn8s-demo.onnx --compare-no-batching   # starts the servers
    python -m bench.http --url http://127.0.0.1:8000                                 # a running server
    python -m bench.http --quick --out-dir /tmp/q                                    # smoke test

Loopback only (127.0.0.1 / localhost / ::1). Every level is bounded in requests and seconds, so a run stops
by itself. The request bodies are real photographs (scikit-image's) resized to a 500 px long side. Per level:
throughput, p50/p90/p95/p99 latency, errors by status, mean ``X-Batch-Size``, queue vs inference time from
the response headers and from ``/metrics``. With ``--model`` the raw forward time of the same ONNX on the
same padded shapes is measured first (before any server starts), for the service-overhead targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from bench.images import encoded_photographs, load_photographs
from bench.machine import describe_machine, machine_slug, usable_cores
from bench.prometheus import parse_samples
from bench.stats import percentiles
from common.contract import INPUT_NAME
from common.geometry import ServingGeometry
from common.onnxrt import create_session, read_metadata

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
CONCURRENCY = (1, 2, 4, 8, 16, 32)
CSV_FIELDS = (
    "server", "mode", "concurrency", "rate", "requests", "ok", "seconds", "throughput_rps", "p50_ms",
    "p90_ms", "p95_ms", "p99_ms", "mean_ms", "errors", "mean_batch_size", "header_queue_ms",
    "header_inference_ms", "metrics_queue_ms", "metrics_inference_ms", "metrics_batch_size",
)  # fmt: skip
REPO_ROOT = Path(__file__).resolve().parent.parent
UNADVERTISED_EXPIRY_S = 2.0
"""Idle expiry of load-client connections to a server that advertises no ``Keep-Alive: timeout``."""


def log(message: str) -> None:
    """One progress line on stderr."""
    print(f"[http] {message}", file=sys.stderr, flush=True)


def check_loopback(url: str) -> str:
    """The URL without a trailing slash; raises ValueError unless its host is a loopback address."""
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"refusing to load-test {url!r}: only loopback hosts {sorted(LOOPBACK_HOSTS)} are allowed"
        )
    return url.rstrip("/")


def advertised_idle_timeout(url: str) -> float | None:
    """The server's idle timeout from its ``Keep-Alive: timeout=N`` response header; None if it sends none."""
    header = httpx.get(f"{url}/health/live", timeout=10).headers.get("keep-alive", "")
    match = re.search(r"timeout=(\d+)", header)
    return float(match.group(1)) if match else None


def load_limits(urls: Iterable[str], connections: int) -> httpx.Limits:
    """Connection-pool limits of a load client: ``connections`` connections, each dropped after being idle
    for half the smallest idle timeout the servers advertise. A server closes a connection its idle timeout
    after the response was written; a client that kept it as long could send a request just as the server
    closes it, and lose that request (POSTs are not retried)."""
    timeouts = [t for t in (advertised_idle_timeout(url) for url in urls) if t is not None]
    expiry = min(timeouts) / 2 if timeouts else UNADVERTISED_EXPIRY_S
    return httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=expiry
    )


@dataclass
class Sample:
    """One request's outcome."""

    latency_s: float
    status: int | str
    batch_size: int | None = None
    queue_ms: float | None = None
    inference_ms: float | None = None


@dataclass
class Level:
    """All samples of one concurrency level or rate, and the wall time they took."""

    mode: str
    concurrency: int | None
    rate: float | None
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0


def parse_metrics(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition summed over model versions (e.g. histogram sums)."""
    return parse_samples(text)


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Server-side means over a level: queue wait per image, inference per batch, images per batch (ms)."""

    def mean(name: str, scale: float = 1.0) -> float | None:
        count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
        total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
        return total / count * scale if count > 0 else None

    return {
        "metrics_queue_ms": mean("fcn_queue_seconds", 1000),
        "metrics_inference_ms": mean("fcn_inference_seconds", 1000),
        "metrics_batch_size": mean("fcn_batch_size"),
    }


async def _send(client: httpx.AsyncClient, url: str, body: tuple[str, bytes, str], fmt: str) -> Sample:
    start = time.perf_counter()
    try:
        response = await client.post(f"{url}/segment", params={"format": fmt}, files={"image": body})
        await response.aread()
    except httpx.HTTPError as error:
        return Sample(time.perf_counter() - start, type(error).__name__)
    latency = time.perf_counter() - start

    def header(name: str) -> float | None:
        value = response.headers.get(name)
        return float(value) if value is not None else None

    batch = header("X-Batch-Size")
    return Sample(
        latency, response.status_code, int(batch) if batch is not None else None, header("X-Queue-Ms"),
        header("X-Inference-Ms"),
    )  # fmt: skip


async def closed_loop(
    client: httpx.AsyncClient, url: str, bodies: Sequence[tuple[str, bytes, str]], concurrency: int,
    requests: int, max_seconds: float, fmt: str,
) -> Level:  # fmt: skip
    """``concurrency`` workers, each sending its next request when the last one returns, until ``requests``
    were sent or ``max_seconds`` passed."""
    level = Level("closed", concurrency, None)
    counter = iter(range(requests))
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        for index in counter:
            if time.perf_counter() > deadline:
                return
            level.samples.append(await _send(client, url, bodies[index % len(bodies)], fmt))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    level.seconds = time.perf_counter() - start
    return level


async def open_loop(
    client: httpx.AsyncClient, url: str, bodies: Sequence[tuple[str, bytes, str]], rate: float,
    duration: float, max_inflight: int, fmt: str,
) -> Level:  # fmt: skip
    """Requests started at a constant ``rate`` for ``duration`` seconds, whatever the responses do; at most
    ``max_inflight`` outstanding (a send that would exceed it is counted as ``dropped``)."""
    level = Level("open", None, rate)
    tasks: list[asyncio.Task[Sample]] = []
    dropped = 0
    start = time.perf_counter()
    for index in range(max(1, int(rate * duration))):
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        if sum(not t.done() for t in tasks) >= max_inflight:
            dropped += 1
            continue
        tasks.append(asyncio.create_task(_send(client, url, bodies[index % len(bodies)], fmt)))
    level.samples = list(await asyncio.gather(*tasks))
    level.samples.extend(Sample(0.0, "dropped") for _ in range(dropped))
    level.seconds = time.perf_counter() - start
    return level


def summarize(level: Level, server: str, delta: dict[str, float | None]) -> dict[str, Any]:
    """One result row of a level."""
    ok = [s for s in level.samples if s.status == 200]
    errors = Counter(str(s.status) for s in level.samples if s.status != 200)
    stats = percentiles([s.latency_s for s in ok]) if ok else {}

    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return float(np.mean(present)) if present else None

    return {
        "server": server,
        "mode": level.mode,
        "concurrency": level.concurrency,
        "rate": level.rate,
        "requests": len(level.samples),
        "ok": len(ok),
        "seconds": level.seconds,
        "throughput_rps": len(ok) / level.seconds if level.seconds > 0 else 0.0,
        **{k: stats.get(k) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms")},
        "errors": dict(errors),
        "mean_batch_size": mean([s.batch_size for s in ok]),  # type: ignore[misc]
        "header_queue_ms": mean([s.queue_ms for s in ok]),
        "header_inference_ms": mean([s.inference_ms for s in ok]),
        **delta,
    }


async def run_levels(urls: dict[str, str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The closed-loop sweep (and the open-loop rates) against every server, alternating the servers level by
    level (only one is loaded at a time), so a slow phase of a shared machine hits all of them alike."""
    bodies = encoded_photographs(args.long_side)
    rows: list[dict[str, Any]] = []
    limits = load_limits(urls.values(), max([*args.concurrency, args.max_inflight]))
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        for url in urls.values():
            for body in bodies[: args.warmup]:
                await _send(client, url, body, args.format)
        plan: list[tuple[str, float]] = [("closed", c) for c in args.concurrency]
        plan += [("open", r) for r in args.rate]
        for (mode, value), (server, url) in itertools.product(plan, urls.items()):
            before = parse_metrics((await client.get(f"{url}/metrics")).text)
            if mode == "closed":
                count = max(args.requests, args.requests_per_worker * int(value))
                level = await closed_loop(
                    client, url, bodies, int(value), count, args.level_seconds, args.format
                )
            else:
                level = await open_loop(
                    client, url, bodies, value, args.duration, args.max_inflight, args.format
                )
            after = parse_metrics((await client.get(f"{url}/metrics")).text)
            row = summarize(level, server, metrics_delta(before, after))
            rows.append(row)
            p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.0f}"
            p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.0f}"
            batch = "-" if row["mean_batch_size"] is None else f"{row['mean_batch_size']:.2f}"
            log(
                f"{server} {mode} {value:g}: {row['ok']}/{row['requests']} ok, "
                f"{row['throughput_rps']:.2f} req/s, "
                f"p50 {p50} ms, p99 {p99} ms, batch {batch}, errors {row['errors'] or 0}"
            )
    return rows


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server_process(model: Path, max_batch_size: int, extra_env: dict[str, str], ready_timeout: float):
    """Start ``python -m server`` on a free loopback port; yield its URL; stop it with SIGTERM (by PID)."""
    port = free_port()
    env = os.environ | extra_env | {
        "FCN_MODEL": str(model), "FCN_HOST": "127.0.0.1", "FCN_PORT": str(port),
        "FCN_MAX_BATCH_SIZE": str(max_batch_size), "FCN_LOG_LEVEL": "warning",
    }  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO_ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.perf_counter() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the server was not ready within {ready_timeout:g} s")
            time.sleep(0.25)
        log(f"server ready at {url} (max_batch_size {max_batch_size})")
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def served_shapes(long_side: int, geometry: ServingGeometry) -> list[tuple[int, int]]:
    """The padded (h, w) the server runs each benchmark photograph at (its bucket)."""
    return [
        geometry.bucket_shape(*geometry.inference_size(image.height, image.width))
        for image in load_photographs(long_side)
    ]


def raw_forward(
    model: Path, shapes: Sequence[tuple[int, int]], batch_sizes: Sequence[int], runs: int, threads: int
) -> dict[int, float]:
    """ONNX Runtime alone on the served shapes: seconds per image at each batch size, averaged over the
    request mix (each distinct shape timed once, weighted by how many photographs land in it)."""
    session = create_session(model, intra_op_threads=threads)
    mix = Counter(shapes)
    per_image: dict[int, float] = {}
    for batch in batch_sizes:
        total = 0.0
        for (height, width), count in mix.items():
            images = np.zeros((batch, height, width, 3), dtype=np.uint8)
            session.run(None, {INPUT_NAME: images})
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, {INPUT_NAME: images})
                times.append(time.perf_counter() - start)
            total += count * float(np.median(times)) / batch
        per_image[batch] = total / len(shapes)
        log(f"raw forward, batch {batch}: {1000 * per_image[batch]:.1f} ms per image over the request mix")
    return per_image


def raw_summary(
    shapes: Sequence[tuple[int, int]], measurements: Sequence[dict[int, float]]
) -> dict[str, Any]:
    """The best (fastest) of several raw measurements per batch size: other load only slows a measurement, so
    the fastest is the closest to the machine's own speed (and the strictest reference for the targets)."""
    best = {b: min(m[b] for m in measurements) for b in measurements[0]}
    fastest = min(best, key=lambda b: best[b])
    return {
        "shapes": [list(s) for s in shapes],
        "ms_per_image": {str(b): 1000 * s for b, s in best.items()},
        "measurements_ms_per_image": [{str(b): 1000 * s for b, s in m.items()} for m in measurements],
        "batch1_ms": 1000 * best[min(best)],
        "best_images_per_s": 1 / best[fastest],
        "best_batch": fastest,
    }


def evaluate_targets(
    rows: list[dict[str, Any]], raw: dict[str, Any] | None, full_size: bool
) -> list[dict[str, Any]]:
    """The service targets (p50 at concurrency 1 vs raw forward, throughput at 16 vs raw, zero errors)."""
    targets: list[dict[str, Any]] = []
    batched = {r["concurrency"]: r for r in rows if r["server"] == "batching" and r["mode"] == "closed"}
    unbatched = {r["concurrency"]: r for r in rows if r["server"] == "no-batching" and r["mode"] == "closed"}

    def add(name: str, value: float | None, goal: str, met: bool | None) -> None:
        status = "not measured" if met is None else "met" if met else "missed"
        targets.append({"target": name, "value": value, "goal": goal, "status": status})

    limit = 1.05 if full_size else 1.3
    one = batched.get(1)
    ratio = one["p50_ms"] / raw["batch1_ms"] if one and raw and one["p50_ms"] else None
    add(
        "p50 at concurrency 1 / raw forward time",
        ratio,
        f"<= {limit}",
        None if ratio is None else ratio <= limit,
    )
    sixteen = batched.get(16)
    share = sixteen["throughput_rps"] / raw["best_images_per_s"] if sixteen and raw else None
    add(
        "throughput at concurrency 16 / best raw throughput",
        share,
        ">= 0.95",
        None if share is None else share >= 0.95,
    )
    closed = [r for r in rows if r["mode"] == "closed"]
    errors = sum(sum(r["errors"].values()) for r in closed)
    add("errors in the closed-loop sweep", float(errors), "== 0", errors == 0 if closed else None)
    if 16 in batched and 16 in unbatched and unbatched[16]["throughput_rps"] > 0:
        gain = batched[16]["throughput_rps"] / unbatched[16]["throughput_rps"]
        add("batching on / off throughput at concurrency 16 (GPU target >= 3)", gain, ">= 3 (GPU only)", None)
    return targets


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of the levels."""
    header = (
        f"{'server':12s} {'level':>8s} {'ok/req':>9s} {'req/s':>7s} {'p50 ms':>8s} {'p90 ms':>8s} "
        f"{'p95 ms':>8s} {'p99 ms':>8s} {'batch':>6s} {'queue ms':>9s} {'infer ms':>9s} errors"
    )

    def num(value: float | None, width: int, digits: int = 0) -> str:
        return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}s}"

    lines = [header, "-" * len(header)]
    for r in rows:
        level = f"c={r['concurrency']}" if r["mode"] == "closed" else f"{r['rate']:g}/s"
        lines.append(
            f"{r['server']:12s} {level:>8s} {r['ok']:>4d}/{r['requests']:<4d} {r['throughput_rps']:7.2f} "
            f"{num(r['p50_ms'], 8)} {num(r['p90_ms'], 8)} {num(r['p95_ms'], 8)} {num(r['p99_ms'], 8)} "
            f"{num(r['mean_batch_size'], 6, 2)} {num(r['metrics_queue_ms'], 9, 1)} "
            f"{num(r['metrics_inference_ms'], 9, 1)} {r['errors'] or ''}"
        )
    return "\n".join(lines)


def write_outputs(report: dict[str, Any], out_dir: Path, name: str, plot: bool) -> list[Path]:
    """<name>.json, <name>.csv and (with ``plot``) <name>.png under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.csv"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    with paths[1].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in report["results"]:
            writer.writerow(row | {"errors": json.dumps(row["errors"])})
    if plot and any(r["mode"] == "closed" for r in report["results"]):
        from bench.plots import plot_http

        paths.append(plot_http(report, out_dir / f"{name}.png"))
    return paths


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running server (loopback only)")
    target.add_argument("--model", type=Path, help="start `python -m server` on this model (and time it raw)")
    parser.add_argument(
        "--no-batching-url", help="with --url and --compare-no-batching: the max_batch_size=1 server"
    )
    parser.add_argument(
        "--compare-no-batching", action="store_true", help="also sweep a max_batch_size=1 server"
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=8, help="FCN_MAX_BATCH_SIZE of the started server"
    )
    parser.add_argument(
        "--server-env", nargs="*", default=[], metavar="FCN_X=V", help="more env for started servers"
    )
    parser.add_argument("--concurrency", nargs="*", type=int, default=list(CONCURRENCY))
    parser.add_argument("--requests", type=int, default=40, help="requests per closed-loop level (at least)")
    parser.add_argument(
        "--requests-per-worker", type=int, default=4, help="and at least this many per worker"
    )
    parser.add_argument("--level-seconds", type=float, default=60.0, help="stop a level after this long")
    parser.add_argument("--rate", nargs="*", type=float, default=[], help="open-loop rates (requests/s)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each open-loop rate")
    parser.add_argument("--max-inflight", type=int, default=64, help="open loop: most outstanding requests")
    parser.add_argument("--format", choices=["png", "json"], default="png", help="response format requested")
    parser.add_argument("--long-side", type=int, default=500, help="photographs resized to this long side")
    parser.add_argument("--warmup", type=int, default=5, help="unrecorded requests before the sweep")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    parser.add_argument(
        "--raw-batch-sizes", nargs="*", type=int, default=[1, 2, 4, 8], help="raw forward batches"
    )
    parser.add_argument("--raw-runs", type=int, default=5, help="timed raw runs per shape and batch")
    parser.add_argument(
        "--full-size", action="store_true", help="apply the full-size net's 1.05x target (else 1.3x)"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=300.0, help="wait this long for a started server"
    )
    parser.add_argument("--name", default="http", help="output file stem (e.g. http-demo)")
    parser.add_argument("--machine", help="results folder name (default: from the CPU/GPU model)")
    parser.add_argument("--out-dir", type=Path, help="default: bench/results/<machine>")
    parser.add_argument("--note", default="", help="free text stored in the report")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small images, few requests: a smoke test")
    args = parser.parse_args(argv)
    if args.url is None and args.model is None:
        parser.error("give --url (a running server) or --model (start one)")
    if args.quick:
        args.concurrency, args.requests, args.requests_per_worker = [1, 4], 6, 1
        args.long_side, args.warmup, args.rate, args.duration = 96, 2, [8.0], 1.0
        args.raw_batch_sizes, args.raw_runs, args.level_seconds = [1, 2], 2, 20.0
    if args.compare_no_batching and args.url and not args.no_batching_url:
        parser.error("--compare-no-batching with --url needs --no-batching-url")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    machine = describe_machine()
    slug = args.machine or machine_slug(machine)
    out_dir = args.out_dir or RESULTS_ROOT / slug
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    raw = None
    servers: list[tuple[str, int]] = [("batching", args.max_batch_size)]
    if args.compare_no_batching:
        servers.append(("no-batching", 1))
    try:
        if args.model is not None:
            from server.settings import Settings

            settings = Settings(
                model=args.model, **{k[4:].lower(): v for k, v in extra_env.items() if k.startswith("FCN_")}
            )
            geometry = ServingGeometry(
                read_metadata(args.model)[0].geometry, settings.max_side, settings.bucket
            )
            shapes = served_shapes(args.long_side, geometry)
            log(f"raw forward of {args.model} on the served shapes {sorted(set(shapes))}")
            timing = (args.model, shapes, args.raw_batch_sizes, args.raw_runs, usable_cores())
            measurements = [raw_forward(*timing)]
            with contextlib.ExitStack() as stack:
                urls = {
                    name: stack.enter_context(
                        server_process(args.model, batch, extra_env, args.ready_timeout)
                    )
                    for name, batch in servers
                }
                rows = asyncio.run(run_levels(urls, args))
            log("raw forward again, after the servers stopped")
            measurements.append(raw_forward(*timing))
            raw = raw_summary(shapes, measurements)
        else:
            urls = {"batching": check_loopback(args.url)}
            if args.compare_no_batching:
                urls["no-batching"] = check_loopback(args.no_batching_url)
            rows = asyncio.run(run_levels(urls, args))
    except (RuntimeError, ValueError) as error:
        print(f"http benchmark failed: {error}", file=sys.stderr)
        return 1
    rows.sort(key=lambda row: [name for name, _ in servers].index(row["server"]))  # stable: levels keep order
    targets = evaluate_targets(rows, raw, args.full_size)
    report = {
        "benchmark": "http",
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine | {"slug": slug, "load_average_at_end": list(os.getloadavg())},
        "note": args.note,
        "model": str(args.model or args.url),
        "settings": {k: v for k, v in vars(args).items() if k not in {"out_dir", "model"}}
        | {"server_env": extra_env},
        "raw_forward": raw,
        "results": rows,
        "targets": targets,
    }
    print(f"\nHTTP service under load: {report['model']} on {slug}\n")
    print(format_table(rows))
    if raw:
        print(
            f"raw forward: {raw['batch1_ms']:.1f} ms per image at batch 1, "
            f"best {raw['best_images_per_s']:.2f} img/s"
        )
    for target in targets:
        value = "-" if target["value"] is None else f"{target['value']:.3g}"
        print(f"  target {target['target']}: {value} (goal {target['goal']}): {target['status'].upper()}")
    for path in write_outputs(report, out_dir, args.name, plot=not args.no_plot):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
