"""Soak test: concurrency 32 for minutes against a real server on the demo model (``make soak``).

    python -m bench.soak                                  # starts python -m server on the demo model, 300 s
    python -m bench.soak --duration 60 --concurrency 16   # shorter
    python -m bench.soak --url http://127.0.0.1:8000 --pid 1234   # a running server (RSS read from its pid)

Prints progress every 10 s and a summary: requests sent and answered, duration, answers by status,
transport errors, the server's resident memory at start / after warm-up / at the end, latency percentiles.
Writes ``bench/results/<machine>/soak.json``. Loopback only; bounded by ``--duration``.
The closed-loop driver ``drive`` is also used by the bounded load test in ``tests/reliability``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.http import check_loopback, load_limits
from bench.images import encoded_photographs
from bench.machine import RESULTS_ROOT, describe_machine, machine_slug
from bench.stats import percentiles
from tests.serverproc import rss_kib, running_server

Body = tuple[str, bytes, str]
"""(file name, bytes, content type) of one request body."""


def log(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


@dataclass
class SoakResult:
    """Everything one closed-loop run observed."""

    concurrency: int
    duration_s: float = 0.0
    sent: int = 0
    answered: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    ok_latencies_s: list[float] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since start, KiB) samples of the server's RSS."""

    def rss_figures(self, warmup_s: float) -> dict[str, float | None]:
        """RSS (MiB) at start, after warm-up, at the end and at most; growth after warm-up in percent."""
        if not self.rss:
            return {"start_mib": None, "after_warmup_mib": None, "end_mib": None, "max_mib": None,
                    "growth_after_warmup_pct": None}  # fmt: skip
        warm = next((kib for t, kib in self.rss if t >= warmup_s), self.rss[-1][1])
        end = self.rss[-1][1]
        return {
            "start_mib": self.rss[0][1] / 1024,
            "after_warmup_mib": warm / 1024,
            "end_mib": end / 1024,
            "max_mib": max(kib for _, kib in self.rss) / 1024,
            "growth_after_warmup_pct": 100.0 * (end - warm) / warm,
        }

    def summary(self, warmup_s: float) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 2),
            "sent": self.sent,
            "answered": self.answered,
            "throughput_rps": self.answered / self.duration_s if self.duration_s else 0.0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors_5xx": sum(v for k, v in self.statuses.items() if k >= 500),
            "transport_errors": dict(self.transport_errors),
            "latency_ok": percentiles(self.ok_latencies_s) if self.ok_latencies_s else None,
            "rss": self.rss_figures(warmup_s),
            "warmup_s": warmup_s,
        }


async def drive(
    url: str,
    bodies: Sequence[Body],
    concurrency: int,
    duration_s: float,
    pid: int | None = None,
    timeout_s: float = 60.0,
    progress_every_s: float | None = None,
) -> SoakResult:
    """``concurrency`` workers POST ``/segment`` back to back (multipart) until ``duration_s`` has passed.

    Every request sent is either answered (any status) or counted under its transport error.
    With ``pid``, the server's RSS is sampled every 0.5 s.
    """
    url = check_loopback(url)
    result = SoakResult(concurrency)
    start = time.perf_counter()
    end = start + duration_s
    limits = await asyncio.to_thread(load_limits, [url], concurrency)

    async def worker(index: int, client: httpx.AsyncClient) -> None:
        turn = index
        while time.perf_counter() < end:
            body = bodies[turn % len(bodies)]
            turn += concurrency
            result.sent += 1
            sent_at = time.perf_counter()
            try:
                response = await client.post(f"{url}/segment", files={"image": body})
            except httpx.HTTPError as error:
                result.transport_errors[type(error).__name__] += 1
                continue
            result.answered += 1
            result.statuses[response.status_code] += 1
            if response.status_code == 200:
                result.ok_latencies_s.append(time.perf_counter() - sent_at)

    async def sample_rss() -> None:
        assert pid is not None
        while True:
            result.rss.append((time.perf_counter() - start, rss_kib(pid)))
            await asyncio.sleep(0.5)

    async def report() -> None:
        assert progress_every_s is not None
        while True:
            await asyncio.sleep(progress_every_s)
            rss = f", RSS {result.rss[-1][1] / 1024:.0f} MiB" if result.rss else ""
            log(
                f"{time.perf_counter() - start:5.0f} s: {result.answered}/{result.sent} answered, "
                f"statuses {dict(result.statuses)}, transport errors {dict(result.transport_errors)}{rss}"
            )

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        helpers = [asyncio.create_task(sample_rss())] if pid is not None else []
        if progress_every_s:
            helpers.append(asyncio.create_task(report()))
        await asyncio.gather(*(worker(i, client) for i in range(concurrency)))
        result.duration_s = time.perf_counter() - start
        if pid is not None:
            result.rss.append((result.duration_s, rss_kib(pid)))
        for task in helpers:
            task.cancel()
    return result


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable summary printed at the end."""
    rss, lat = summary["rss"], summary["latency_ok"] or {}

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} MiB"

    growth = rss["growth_after_warmup_pct"]
    lines = [
        f"requests sent {summary['sent']}, answered {summary['answered']} in {summary['duration_s']:.1f} s "
        f"({summary['throughput_rps']:.2f} req/s) at concurrency {summary['concurrency']}",
        f"answers by status: {summary['statuses']}; 5xx: {summary['errors_5xx']}; "
        f"transport errors: {summary['transport_errors'] or 0}",
        f"server RSS: start {mib(rss['start_mib'])}, after {summary['warmup_s']:g} s warm-up "
        f"{mib(rss['after_warmup_mib'])}, end {mib(rss['end_mib'])}, max {mib(rss['max_mib'])}, "
        f"growth after warm-up {'-' if growth is None else f'{growth:+.1f}%'}",
    ]
    if lat:
        lines.append(
            "latency of 200s: "
            + ", ".join(
                f"{k.removesuffix('_ms')} {lat[k]:.0f} ms" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
            )
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load [300]")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop workers [32]")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the RSS baseline [30]")
    parser.add_argument("--model", type=Path, default=None, help="model for the server (default: the demo)")
    parser.add_argument("--url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, for RSS")
    parser.add_argument("--long-side", type=int, default=500, help="photographs' long side in pixels [500]")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path [bench/results/<machine>/soak.json]"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak, print the summary, write the JSON; exit 1 if any request failed with 5xx or went
    unanswered, or the RSS grew more than 10% after warm-up."""
    args = parse_args(argv)
    bodies = encoded_photographs(args.long_side)
    settings: dict[str, object] = {"log_level": "warning"}
    if args.model is not None:
        settings["model"] = args.model.resolve()
    if args.url:
        log(f"soaking {args.url} for {args.duration:g} s at concurrency {args.concurrency}")
        result = asyncio.run(
            drive(args.url, bodies, args.concurrency, args.duration, args.pid, progress_every_s=10)
        )
        server_settings: dict[str, Any] = {"url": args.url}
    else:
        log_dir = tempfile.TemporaryDirectory(prefix="soak-")
        log("starting python -m server (model load and warm-up first)")
        with log_dir, running_server(settings, Path(log_dir.name) / "server.log") as server:
            model = httpx.get(server.url + "/v1/model", timeout=10).json()
            log(f"server ready at {server.url}: {model['name']} on {model['backend']}/{model['provider']}")
            log(f"soaking for {args.duration:g} s at concurrency {args.concurrency}")
            result = asyncio.run(
                drive(
                    server.url, bodies, args.concurrency, args.duration, server.proc.pid, progress_every_s=10
                )
            )
            metrics = httpx.get(server.url + "/metrics", timeout=10).text
        exit_code = server.proc.returncode
        server_settings = {
            "model": model["name"], "backend": model["backend"], "provider": model["provider"],
            "batching": model["batching"], "exit_code_after_sigterm": exit_code,
            "failures": [line for line in metrics.splitlines() if line.startswith("fcn_failures_total")],
        }  # fmt: skip
    summary = result.summary(args.warmup)
    machine = describe_machine()
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "server": server_settings,
        "images": [name for name, _, _ in bodies],
        **summary,
    }
    out = args.out or RESULTS_ROOT / machine_slug(machine) / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_summary(summary))
    print(f"written {out}")
    growth = summary["rss"]["growth_after_warmup_pct"]
    healthy = (
        summary["errors_5xx"] == 0
        and summary["sent"] == summary["answered"]
        and (growth is None or growth < 10.0)
    )
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
