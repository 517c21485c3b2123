"""Load generator for the segmentation service: closed-loop concurrency sweep and open-loop constant rate.

    python -m bench.http --model models/demo/fcn8s-demo.onnx --compare-no-batching   # starts the servers
    python -m bench.http --model models/demo/fcn8s-demo.onnx --compare-naive         # vs the naive baseline
    python -m bench.http --random-width 0.125 --compare-naive                        # seeded width-1/8 net
    python -m bench.http --url http://127.0.0.1:8000                                 # a running server
    python -m bench.http --quick --model M.onnx --out-dir /tmp/q                     # smoke test

Loopback only (127.0.0.1 / localhost / ::1). Every level is bounded in requests and seconds, so a run stops
by itself. The request bodies are real photographs (scikit-image's) resized to a 500 px long side. Per level:
throughput, p50/p90/p95/p99 latency, errors by status, mean ``X-Batch-Size``, queue vs inference time from
the response headers and from ``/metrics``. With ``--model`` the raw forward time of the same ONNX on the
same padded shapes is measured first (before any server starts), for the service-overhead targets.

Per level it also reads the service's ``fcn_stage_seconds{stage}`` (mean per request of each stage) and the
CPU time of every started server process (``/proc``): CPU per request in total, on the event-loop thread, in
the codec stages, and the rest (inference and thread pools). ``--compare-naive`` adds the naive baseline
(:mod:`bench.naive`, on the plain export and on the service's graph) to the same sweep, the best raw
throughput of three ways to run the graph (:mod:`bench.raw`), label agreement with ORT FP32
(:mod:`bench.agreement`), the PNG compression levels (:mod:`bench.overhead`) and the ratios and targets of
:mod:`bench.baseline`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from bench import baseline, overhead
from bench.agreement import Responses, agreements, reference_labels
from bench.images import encoded_photographs, load_photographs
from bench.machine import RESULTS_ROOT, describe_machine, machine_slug, usable_cores
from bench.models import DEFAULT_CACHE
from bench.procstat import CpuSample, cpu_sample
from bench.prometheus import parse_samples
from bench.raw import best_raw, measure_all, raw_forward, raw_summary
from bench.stats import percentiles
from common.contract import PROP_PRECISION, PROP_SHA256
from common.geometry import ServingGeometry
from common.onnxrt import read_metadata, read_props

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
CONCURRENCY = (1, 2, 4, 8, 16, 32)
NAIVE_CONCURRENCY = (1, 4, 16)
CSV_FIELDS = (
    "server", "kind", "mode", "concurrency", "rate", "requests", "ok", "seconds", "throughput_rps", "p50_ms",
    "p90_ms", "p95_ms", "p99_ms", "mean_ms", "errors", "mean_batch_size", "header_queue_ms",
    "header_inference_ms", "metrics_queue_ms", "metrics_inference_ms", "metrics_batch_size",
    "infer_ms_per_image", "cpu_ms_per_request", "loop_cpu_ms_per_request", "codec_cpu_ms_per_request",
    "other_cpu_ms_per_request", "client_cpu_ms_per_request", "server_cpu_cores", "stage_ms",
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
    image: int = 0
    """Index of the request body (photograph) sent."""
    body: bytes | None = None
    """The 200 response's body, until the level is summarised."""


@dataclass
class Level:
    """All samples of one concurrency level or rate, and the wall time they took."""

    mode: str
    concurrency: int | None
    rate: float | None
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0


def parse_metrics(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, summed over model versions: ``name`` or
    ``name{label="value",...}`` (e.g. ``fcn_stage_seconds_sum{stage="decode"}``)."""
    return parse_samples(text)


def _mean(before: dict[str, float], after: dict[str, float], name: str, labels: str = "") -> float | None:
    """Mean of a histogram's new observations (``_sum``/``_count`` deltas), None without any."""
    count = after.get(f"{name}_count{labels}", 0.0) - before.get(f"{name}_count{labels}", 0.0)
    total = after.get(f"{name}_sum{labels}", 0.0) - before.get(f"{name}_sum{labels}", 0.0)
    return total / count if count > 0 else None


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Server-side means over a level: queue wait per image, inference per batch, images per batch (ms)."""

    def ms(value: float | None) -> float | None:
        return None if value is None else 1000 * value

    return {
        "metrics_queue_ms": ms(_mean(before, after, "fcn_queue_seconds")),
        "metrics_inference_ms": ms(_mean(before, after, "fcn_inference_seconds")),
        "metrics_batch_size": _mean(before, after, "fcn_batch_size"),
    }


def stage_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean ms per request of each stage of ``fcn_stage_seconds{stage}`` (stages as the server lists them)."""
    prefix = 'fcn_stage_seconds_count{stage="'
    stages = [key[len(prefix) : -2] for key in after if key.startswith(prefix)]
    means = {stage: _mean(before, after, "fcn_stage_seconds", f'{{stage="{stage}"}}') for stage in stages}
    return {stage: None if mean is None else 1000 * mean for stage, mean in means.items()}


def amortised_inference_ms(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Backend wall time per image over a level: batch times summed ÷ images that reached the model."""
    images = after.get("fcn_inference_images_total", 0.0) - before.get("fcn_inference_images_total", 0.0)
    total = after.get("fcn_inference_seconds_sum", 0.0) - before.get("fcn_inference_seconds_sum", 0.0)
    return 1000 * total / images if images > 0 else None


async def _send(
    client: httpx.AsyncClient, url: str, bodies: Sequence[tuple[str, bytes, str]], index: int, fmt: str
) -> Sample:
    image = index % len(bodies)
    start = time.perf_counter()
    try:
        response = await client.post(f"{url}/segment", params={"format": fmt}, files={"image": bodies[image]})
        await response.aread()
    except httpx.HTTPError as error:
        return Sample(time.perf_counter() - start, type(error).__name__, image=image)
    latency = time.perf_counter() - start

    def header(name: str) -> float | None:
        value = response.headers.get(name)
        return float(value) if value is not None else None

    batch = header("X-Batch-Size")
    return Sample(
        latency, response.status_code, int(batch) if batch is not None else None, header("X-Queue-Ms"),
        header("X-Inference-Ms"), image, response.content if response.status_code == 200 else None,
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
            level.samples.append(await _send(client, url, bodies, index, fmt))

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
        tasks.append(asyncio.create_task(_send(client, url, bodies, index, fmt)))
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


@dataclass(frozen=True)
class Served:
    """A server under test: its URL, what it is (``service`` = ``python -m server``, ``naive``) and, when this
    benchmark started it, its process id (for the CPU accounting)."""

    url: str
    kind: str = "service"
    pid: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """What is read before and after a level: the server's /metrics, its CPU, the load generator's CPU."""

    metrics: dict[str, float]
    cpu: CpuSample | None
    client_cpu_s: float


async def snapshot(client: httpx.AsyncClient, served: Served) -> Snapshot:
    metrics = {}
    if served.kind == "service":
        metrics = parse_metrics((await client.get(f"{served.url}/metrics")).text)
    cpu = cpu_sample(served.pid) if served.pid is not None else None
    return Snapshot(metrics, cpu, time.process_time())


def level_costs(before: Snapshot, after: Snapshot, ok: int, seconds: float) -> dict[str, Any]:
    """The per-request split of a level: stage means from /metrics, and CPU ms per 200 response of the server
    process tree, its event-loop (main) thread, the codec stages (the thread-CPU stages' sum), the rest
    (inference and pool threads: total - loop - codec) and the load generator."""
    stages = stage_delta(before.metrics, after.metrics)
    cpu_stages = [v for s, v in stages.items() if s not in baseline.WALL_STAGES and v is not None]
    codec = sum(cpu_stages) if cpu_stages else None
    row: dict[str, Any] = {
        "stage_ms": stages,
        "infer_ms_per_image": amortised_inference_ms(before.metrics, after.metrics),
        "codec_cpu_ms_per_request": codec,
        "client_cpu_ms_per_request": 1000 * (after.client_cpu_s - before.client_cpu_s) / ok if ok else None,
        "cpu_ms_per_request": None,
        "loop_cpu_ms_per_request": None,
        "other_cpu_ms_per_request": None,
        "server_cpu_cores": None,
    }
    if before.cpu is not None and after.cpu is not None and ok:
        used = after.cpu - before.cpu
        row["cpu_ms_per_request"] = 1000 * used.total_s / ok
        row["loop_cpu_ms_per_request"] = 1000 * used.main_thread_s / ok
        row["other_cpu_ms_per_request"] = 1000 * (used.total_s - used.main_thread_s) / ok - (codec or 0.0)
        row["server_cpu_cores"] = used.total_s / seconds if seconds > 0 else None
    return row


def accumulated(pairs: Sequence[tuple[Snapshot, Snapshot]]) -> tuple[Snapshot, Snapshot]:
    """Several (before, after) snapshot pairs of one server as one pair whose difference is their sum."""
    keys = list(dict.fromkeys(key for _, after in pairs for key in after.metrics))
    metrics = {k: sum(a.metrics.get(k, 0.0) - b.metrics.get(k, 0.0) for b, a in pairs) for k in keys}
    client = sum(a.client_cpu_s - b.client_cpu_s for b, a in pairs)
    cpu = None
    if all(b.cpu is not None and a.cpu is not None for b, a in pairs):
        used = [a.cpu - b.cpu for b, a in pairs]  # type: ignore[operator]
        cpu = CpuSample(sum(u.total_s for u in used), sum(u.main_thread_s for u in used))
    zero = CpuSample(0.0, 0.0) if cpu is not None else None
    return Snapshot({}, zero, 0.0), Snapshot(metrics, cpu, client)


async def run_levels(
    servers: dict[str, Served], args: argparse.Namespace, responses: dict[str, Responses] | None = None
) -> list[dict[str, Any]]:
    """The closed-loop sweep (and the open-loop rates) against every server, alternating the servers within
    each level (only one is loaded at a time): a closed-loop level runs in ``args.rounds`` rounds, and each
    round gives every server its share of the requests in turn, starting at server (level + round) mod k, so
    a slow phase of a shared machine hits all of them alike. With ``responses``, each server's PNG bodies are
    kept there by image."""
    bodies = encoded_photographs(args.long_side)
    rows: list[dict[str, Any]] = []
    limits = await asyncio.to_thread(
        load_limits, [served.url for served in servers.values()], max([*args.concurrency, args.max_inflight])
    )
    names = list(servers)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        for served in servers.values():
            for index in range(args.warmup):
                await _send(client, served.url, bodies, index, args.format)
        plan: list[tuple[str, float]] = [("closed", c) for c in args.concurrency]
        plan += [("open", r) for r in args.rate]
        for step, (mode, value) in enumerate(plan):
            concurrency, rate = (int(value), None) if mode == "closed" else (None, value)
            levels = {name: Level(mode, concurrency, rate) for name in names}
            pairs: dict[str, list[tuple[Snapshot, Snapshot]]] = {name: [] for name in names}
            rounds = max(1, args.rounds) if mode == "closed" else 1
            count = max(args.requests, args.requests_per_worker * int(value))
            for turn in range(rounds):
                shift = (step + turn) % len(names)
                for server in names[shift:] + names[:shift]:
                    served = servers[server]
                    before = await snapshot(client, served)
                    if mode == "closed":
                        share = count // rounds + (turn < count % rounds)
                        part = await closed_loop(
                            client, served.url, bodies, int(value), share, args.level_seconds / rounds,
                            args.format,
                        )  # fmt: skip
                    else:
                        part = await open_loop(
                            client, served.url, bodies, value, args.duration, args.max_inflight, args.format
                        )
                    pairs[server].append((before, await snapshot(client, served)))
                    levels[server].samples += part.samples
                    levels[server].seconds += part.seconds
            for server in names:
                level, (before, after) = levels[server], accumulated(pairs[server])
                row = summarize(level, server, metrics_delta(before.metrics, after.metrics))
                row |= {"kind": servers[server].kind} | level_costs(before, after, row["ok"], level.seconds)
                rows.append(row)
                for sample in level.samples:
                    if responses is not None and sample.body is not None:
                        responses.setdefault(server, Responses()).add(sample.image, sample.body)
                    sample.body = None
                log(level_line(row, mode, value))
    return rows


def level_line(row: dict[str, Any], mode: str, value: float) -> str:
    """One progress line for a finished level."""

    def num(key: str, digits: int = 0) -> str:
        return "-" if row.get(key) is None else f"{row[key]:.{digits}f}"

    return (
        f"{row['server']} {mode} {value:g}: {row['ok']}/{row['requests']} ok, "
        f"{row['throughput_rps']:.2f} req/s, "
        f"p50 {num('p50_ms')} ms, p99 {num('p99_ms')} ms, batch {num('mean_batch_size', 2)}, "
        f"CPU {num('cpu_ms_per_request', 1)} ms/req, errors {row['errors'] or 0}"
    )


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Launch:
    """How to start one server: ``python -m <argv...>`` with ``env``, on ``port``, of ``kind``."""

    argv: list[str]
    env: dict[str, str]
    port: int
    kind: str


def service_launch(env: dict[str, str]) -> Launch:
    """``python -m server`` with ``env`` (FCN_* settings) on a free loopback port."""
    port = free_port()
    return Launch(["server"], env | {"FCN_HOST": "127.0.0.1", "FCN_PORT": str(port)}, port, "service")


def naive_launch(onnx: Path, graph: str, log_level: str) -> Launch:
    """``python -m bench.naive`` on a free loopback port."""
    port = free_port()
    argv = [
        "bench.naive",
        "--onnx",
        str(onnx),
        "--graph",
        graph,
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    return Launch(argv, dict(os.environ), port, "naive")


@contextlib.contextmanager
def running(launches: dict[str, Launch], ready_timeout: float) -> Iterator[dict[str, Served]]:
    """Start every server at once (output to log files), wait until each answers ``/health/ready``, yield
    them, stop them with SIGTERM (by PID; killed after 30 s)."""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as logs:
        try:
            for name, launch in launches.items():
                with (Path(logs) / f"{name}.log").open("wb") as out:
                    processes[name] = subprocess.Popen(
                        [sys.executable, "-m", *launch.argv],
                        cwd=REPO_ROOT,
                        env=launch.env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
            deadline = time.perf_counter() + ready_timeout
            for name, launch in launches.items():
                _wait_ready(name, processes[name], launch.port, deadline, Path(logs) / f"{name}.log")
            yield {
                name: Served(f"http://127.0.0.1:{launch.port}", launch.kind, processes[name].pid)
                for name, launch in launches.items()
            }
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_ready(
    name: str, process: subprocess.Popen[bytes], port: int, deadline: float, log_file: Path
) -> None:
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with code {process.returncode} before it was ready:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                log(f"{name} ready at {url}")
                return
        if time.perf_counter() > deadline:
            raise RuntimeError(
                f"{name} was not ready in time:\n{log_file.read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.25)


def served_shapes(long_side: int, geometry: ServingGeometry) -> list[tuple[int, int]]:
    """The padded (h, w) the server runs each benchmark photograph at (its bucket)."""
    return [
        geometry.bucket_shape(*geometry.inference_size(image.height, image.width))
        for image in load_photographs(long_side)
    ]


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
        f"{'server':14s} {'level':>8s} {'ok/req':>9s} {'req/s':>7s} {'p50 ms':>8s} {'p90 ms':>8s} "
        f"{'p95 ms':>8s} {'p99 ms':>8s} {'batch':>6s} {'queue ms':>9s} {'infer ms':>9s} errors"
    )

    def num(value: float | None, width: int, digits: int = 0) -> str:
        return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}s}"

    lines = [header, "-" * len(header)]
    for r in rows:
        level = f"c={r['concurrency']}" if r["mode"] == "closed" else f"{r['rate']:g}/s"
        lines.append(
            f"{r['server']:14s} {level:>8s} {r['ok']:>4d}/{r['requests']:<4d} {r['throughput_rps']:7.2f} "
            f"{num(r['p50_ms'], 8)} {num(r['p90_ms'], 8)} {num(r['p95_ms'], 8)} {num(r['p99_ms'], 8)} "
            f"{num(r['mean_batch_size'], 6, 2)} {num(r['metrics_queue_ms'], 9, 1)} "
            f"{num(r['metrics_inference_ms'], 9, 1)} {r['errors'] or ''}"
        )
    return "\n".join(lines)


def write_outputs(report: dict[str, Any], out_dir: Path, name: str, plot: bool) -> list[Path]:
    """<name>.json, <name>.csv and (with ``plot``) <name>.png under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.csv"]
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    with paths[1].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in report["results"]:
            writer.writerow(
                row | {"errors": json.dumps(row["errors"]), "stage_ms": json.dumps(row.get("stage_ms"))}
            )
    if plot and any(r["mode"] == "closed" for r in report["results"]):
        from bench.plots import plot_http, plot_http_naive

        draw = plot_http_naive if report.get("comparison") else plot_http
        paths.append(draw(report, out_dir / f"{name}.png"))
    return paths


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:FCN_X=V,FCN_Y=W`` → (name, env)."""
    name, _, assignments = text.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if "=" in item)
    if not name or not env or any(not key.startswith("FCN_") for key in env):
        raise ValueError(f"--variant {text!r}: expected NAME:FCN_X=V[,FCN_Y=W...]")
    return name, env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running server (loopback only)")
    target.add_argument("--model", type=Path, help="start `python -m server` on this model (and time it raw)")
    target.add_argument(
        "--random-width", type=float, help="start it on a seeded random-weight FCN-8s of this width (cached)"
    )
    parser.add_argument(
        "--no-batching-url", help="with --url and --compare-no-batching: the max_batch_size=1 server"
    )
    parser.add_argument(
        "--compare-no-batching", action="store_true", help="also sweep a max_batch_size=1 server"
    )
    parser.add_argument(
        "--compare-naive",
        action="store_true",
        help="also sweep the naive baseline (bench.naive) on the plain export and on the service's graph",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="--compare-naive with --model: the weights of the plain export (default: the model's "
        ".safetensors sibling; its SHA-256 must equal the ONNX file's source_sha256)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:FCN_X=V[,FCN_Y=W]",
        help="another service configuration in the same sweep (repeatable), e.g. int8:FCN_MODEL=m-int8.onnx",
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="ONNX exports (plain, random)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        help="FCN_MAX_BATCH_SIZE of the started server (default: unset, so the server measures its cap)",
    )
    parser.add_argument(
        "--server-env", nargs="*", default=[], metavar="FCN_X=V", help="more env for started services"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        help="log level of started servers (FCN_LOG_LEVEL; uvicorn's for naive)",
    )
    parser.add_argument(
        "--concurrency",
        nargs="*",
        type=int,
        help="closed-loop levels (default 1 2 4 8 16 32; with --compare-naive 1 4 16)",
    )
    parser.add_argument("--requests", type=int, default=40, help="requests per closed-loop level (at least)")
    parser.add_argument(
        "--requests-per-worker", type=int, default=4, help="and at least this many per worker"
    )
    parser.add_argument("--level-seconds", type=float, default=60.0, help="stop a level after this long")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="split each closed-loop level into this many rounds alternating the servers (a noisy machine)",
    )  # fmt: skip
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
    parser.add_argument("--name", help="output file stem (default http, or http-naive with --compare-naive)")
    parser.add_argument("--machine", help="results folder name (default: from the CPU/GPU model)")
    parser.add_argument("--out-dir", type=Path, help="default: bench/results/<machine>")
    parser.add_argument("--note", default="", help="free text stored in the report")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small images, few requests: a smoke test")
    args = parser.parse_args(argv)
    if args.url is None and args.model is None and args.random_width is None:
        parser.error("give --url (a running server), --model or --random-width (start one)")
    if args.concurrency is None:
        args.concurrency = list(NAIVE_CONCURRENCY if args.compare_naive else CONCURRENCY)
    if args.quick:
        args.concurrency = [1, 4]
        args.requests, args.requests_per_worker = 6, 1
        args.long_side, args.warmup, args.duration = 96, 2, 1.0
        args.rate = [] if args.compare_naive else [8.0]
        args.raw_batch_sizes, args.raw_runs, args.level_seconds = [1, 2], 2, 20.0
    args.name = args.name or ("http-naive" if args.compare_naive else "http")
    if args.compare_no_batching and args.url and not args.no_batching_url:
        parser.error("--compare-no-batching with --url needs --no-batching-url")
    if args.compare_naive and args.url:
        parser.error("--compare-naive starts the servers itself: give --model or --random-width")
    if args.compare_naive and args.format != "png":
        parser.error("--compare-naive compares label PNGs: --format png")
    try:
        args.variants = dict(parse_variant(text) for text in args.variant)
        args.extra_env = dict(item.split("=", 1) for item in args.server_env)
    except ValueError as error:
        parser.error(str(error))
    reserved = {"batching", "no-batching", "service", baseline.NAIVE, baseline.NAIVE_GRAPH}
    if reserved & set(args.variants):
        parser.error(f"--variant names must differ from {sorted(reserved)}")
    return args


@dataclass(frozen=True)
class Subject:
    """What is benchmarked: the service's FP32 ONNX, the naive plain export of the same weights, and where
    the weights came from."""

    model: Path
    naive: Path | None
    weights: str


def resolve_subject(args: argparse.Namespace) -> Subject:
    """Export (or find in the cache) the ONNX files the run needs; checks the checkpoint matches the model."""
    from bench.models import ModelSpec, fp32_onnx, naive_onnx, naive_onnx_of_checkpoint

    if args.random_width is not None:
        spec = ModelSpec(width=args.random_width)
        model = fp32_onnx(spec, args.cache)
        naive = naive_onnx(spec, args.cache) if args.compare_naive else None
        return Subject(model, naive, f"seeded random weights ({spec.key}; timing does not depend on them)")
    model = Path(args.model)
    if not args.compare_naive:
        return Subject(model, None, "from the ONNX file")
    from common.digest import file_sha256

    props = read_props(model)
    if props.get(PROP_PRECISION, "fp32") != "fp32":
        raise ValueError(f"{model} is {props[PROP_PRECISION]}: give the FP32 model (others as --variant)")
    checkpoint = Path(args.checkpoint or model.with_suffix(".safetensors"))
    if not checkpoint.is_file():
        raise ValueError(f"no checkpoint {checkpoint} for the naive export: give --checkpoint")
    if props.get(PROP_SHA256) not in (None, file_sha256(checkpoint)):
        raise ValueError(
            f"{checkpoint} is not the checkpoint {model} was exported from (source_sha256 differs)"
        )
    return Subject(model, naive_onnx_of_checkpoint(checkpoint, args.cache), f"checkpoint {checkpoint}")


def serving_geometry(model: Path, env: dict[str, str]) -> tuple[ServingGeometry, int]:
    """The started service's geometry and pixel limit (its settings' defaults unless ``env`` sets them)."""
    from server.settings import Settings

    keys = ("max_side", "bucket", "max_pixels")
    settings = Settings(
        model=model, **{k: env[f"FCN_{k.upper()}"] for k in keys if f"FCN_{k.upper()}" in env}
    )
    return ServingGeometry(
        read_metadata(model)[0].geometry, settings.max_side, settings.bucket
    ), settings.max_pixels


def launches_for(args: argparse.Namespace, subject: Subject) -> dict[str, Launch]:
    """Every server of the sweep: the service (and its variants, no-batching), then the naive pair."""
    base = (
        dict(os.environ)
        | {
            "FCN_MODEL": str(subject.model),
            "FCN_LOG_LEVEL": args.log_level,
        }
        | ({"FCN_MAX_BATCH_SIZE": str(args.max_batch_size)} if args.max_batch_size else {})
        | args.extra_env
    )
    launches = {"service" if args.compare_naive else "batching": service_launch(base)}
    launches |= {name: service_launch(base | env) for name, env in args.variants.items()}
    if args.compare_no_batching:
        launches["no-batching"] = service_launch(base | {"FCN_MAX_BATCH_SIZE": "1"})
    if args.compare_naive and subject.naive is not None:
        launches[baseline.NAIVE] = naive_launch(subject.naive, "plain", args.log_level)
        launches[baseline.NAIVE_GRAPH] = naive_launch(subject.model, "deployable", args.log_level)
    return launches


def describe_servers(servers: dict[str, Served], launches: dict[str, Launch]) -> dict[str, Any]:
    """What each server runs: the service's ``/v1/model`` (backend, provider, precision, batching) and FCN_*
    environment; the naive server's command line."""
    described: dict[str, Any] = {}
    for name, served in servers.items():
        launch = launches[name]
        if served.kind == "naive":
            described[name] = {"kind": "naive", "command": ["python", "-m", *launch.argv]}
            continue
        info = httpx.get(f"{served.url}/v1/model", timeout=10).json()
        keep = ("name", "backend", "provider", "precision", "batching")
        env = {
            k: v for k, v in launch.env.items() if k.startswith("FCN_") and k not in {"FCN_HOST", "FCN_PORT"}
        }
        described[name] = {"kind": "service", "env": env} | {k: info.get(k) for k in keep}
    return described


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    machine = describe_machine()
    slug = args.machine or machine_slug(machine)
    out_dir = args.out_dir or RESULTS_ROOT / slug
    raw = subject = None
    extra: dict[str, Any] = {}
    responses: dict[str, Responses] = {}
    try:
        if args.url is None:
            subject = resolve_subject(args)
            geometry, max_pixels = serving_geometry(subject.model, args.extra_env)
            shapes = served_shapes(args.long_side, geometry)
            cores = usable_cores()
            log(f"raw forward of {subject.model} on the served shapes {sorted(set(shapes))}")
            timing = (subject.model, shapes, args.raw_batch_sizes, args.raw_runs, cores)
            if args.compare_naive:
                bodies = [body for _, body, _ in encoded_photographs(args.long_side)]
                references = reference_labels(subject.model, bodies, geometry, max_pixels)
                palette = read_metadata(subject.model)[0].palette
                levels = overhead.png_levels(references, palette)
                extra["overhead"] = {
                    "png_levels": levels,
                    "png_recommendation": overhead.recommendation(levels),
                    "log_line_us": overhead.log_line_us(),
                }
                measurements = [measure_all(*timing)]
            else:
                measurements = [{"one_session": raw_forward(*timing)}]
            launches = launches_for(args, subject)
            with running(launches, args.ready_timeout) as servers:
                extra["servers"] = describe_servers(servers, launches)
                rows = asyncio.run(run_levels(servers, args, responses if args.compare_naive else None))
            log("raw forward again, after the servers stopped")
            measurements.append(
                measure_all(*timing) if args.compare_naive else {"one_session": raw_forward(*timing)}
            )
            raw = (
                best_raw(shapes, measurements, cores)
                if args.compare_naive
                else raw_summary(shapes, [m["one_session"] for m in measurements])
            )
            if args.compare_naive:
                found = agreements(responses, references)
                extra["agreement"] = found
                extra["comparison"] = baseline.compare(rows, found, raw["best_raw_images_per_s"])
        else:
            servers = {"batching": Served(check_loopback(args.url))}
            if args.compare_no_batching:
                servers["no-batching"] = Served(check_loopback(args.no_batching_url))
            rows = asyncio.run(run_levels(servers, args))
    except (RuntimeError, ValueError, OSError) as error:
        print(f"http benchmark failed: {error}", file=sys.stderr)
        return 1
    order = list(servers)
    rows.sort(key=lambda row: order.index(row["server"]))  # stable: levels keep their order
    comparison = extra.get("comparison")
    targets = (
        baseline.naive_targets(rows, comparison)
        if comparison
        else evaluate_targets(rows, raw, args.full_size)
    )
    model = str(subject.model if subject else args.url)
    report = {
        "benchmark": "http-naive" if comparison else "http",
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine | {"slug": slug, "load_average_at_end": list(os.getloadavg())},
        "note": args.note,
        "model": model,
        "weights": subject.weights if subject else None,
        "naive_onnx": str(subject.naive) if subject and subject.naive else None,
        "settings": {
            k: v
            for k, v in vars(args).items()
            if k not in {"out_dir", "model", "cache", "extra_env", "variant"}
        }
        | {"server_env": args.extra_env},
        "raw_forward": raw,
        "results": rows,
        "targets": targets,
    } | extra
    print_summary(report, slug)
    for path in write_outputs(report, out_dir, args.name, plot=not args.no_plot):
        print(f"wrote {path}")
    return 0


def print_summary(report: dict[str, Any], slug: str) -> None:
    """The tables and the targets, on stdout."""
    print(f"\nHTTP service under load: {report['model']} on {slug}\n")
    print(format_table(report["results"]))
    raw, comparison = report["raw_forward"], report.get("comparison")
    if comparison:
        print(
            "\nPer request: stage means (ms; CPU for codec stages, wall for receive/queue/infer) and CPU ms"
        )
        print(baseline.stage_table(report["results"]))
        print("\nRatios (same sweep, levels alternating)")
        print(baseline.ratio_table(comparison))
        methods = ", ".join(
            f"{name} {'-' if rate is None else f'{rate:.2f}'}"
            for name, rate in raw["methods_images_per_s"].items()
        )
        print(
            f"\nbest raw throughput: {raw['best_raw_images_per_s']:.2f} img/s ({raw['best_method']}); "
            f"{methods}"
        )
        for server, found in report["agreement"].items():
            if found["agreement"] is not None:
                print(
                    f"labels vs ORT FP32, {server}: {100 * found['agreement']:.3f}% of pixels, "
                    f"worst response {100 * found['worst']:.3f}%, "
                    f"identical responses {100 * found['identical_share']:.1f}%"
                )
        cost = report["overhead"]
        for row in cost["png_levels"]:
            mark = " (the service's)" if row["service_default"] else ""
            print(
                f"PNG compress_level {row['level']}{mark}: {row['cpu_ms']:.2f} ms CPU, "
                f"{row['bytes']:.0f} bytes"
            )
        print(f"  -> {cost['png_recommendation']}; one JSON log line: {cost['log_line_us']:.1f} us CPU")
    elif raw:
        print(
            f"raw forward: {raw['batch1_ms']:.1f} ms per image at batch 1, "
            f"best {raw['best_images_per_s']:.2f} img/s"
        )
    for target in report["targets"]:
        value = "-" if target["value"] is None else f"{target['value']:.3g}"
        server = f" [{target['server']}]" if target.get("server") else ""
        print(
            f"  target {target['target']}{server}: {value} (goal {target['goal']}): "
            f"{target['status'].upper()}"
        )


if __name__ == "__main__":
    sys.exit(main())
