"""Overload: a burst far beyond a small queue. Excess requests are refused at once with Retry-After,
admitted ones finish within their deadline, and the server recovers fully when the burst ends."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path

import httpx

from bench.http import load_limits

from .fakes import FakeSpec, seen_marks
from .helpers import (
    assert_clean_error,
    failures,
    metrics,
    percentile,
    post_image,
    solid_png,
    unique_colours,
    wait_until,
)
from .serverproc import fake_server

BURST = 48
DEADLINE_MS = 8000
QUEUE_SIZE = 4
OVERLOAD_SETTINGS: dict[str, object] = {
    "max_batch_size": 2,
    "max_delay_ms": 5,
    "queue_size": QUEUE_SIZE,
    "deadline_ms": DEADLINE_MS,
    "retry_after_s": 2,
}


async def _burst(url: str, bodies: list[bytes]) -> list[tuple[httpx.Response, float]]:
    """Send every body at once; return each response with its latency in seconds."""
    limits = await asyncio.to_thread(load_limits, [url], len(bodies))
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(client.get(url + "/health/live") for _ in range(len(bodies))))  # open sockets

        async def one(body: bytes) -> tuple[httpx.Response, float]:
            start = time.perf_counter()
            response = await client.post(
                url + "/segment", content=body, headers={"Content-Type": "image/png"}
            )
            return response, time.perf_counter() - start

        return await asyncio.gather(*(one(body) for body in bodies))


def run_burst(tmp: Path, queue_full_status: int | None = None) -> dict[str, float]:
    """One burst of BURST simultaneous requests against a fresh server (0.15 s per batch of 2)."""
    settings = dict(OVERLOAD_SETTINGS)
    if queue_full_status is not None:
        settings["queue_full_status"] = queue_full_status
    expected_status = queue_full_status or 429
    with fake_server(tmp, settings, FakeSpec(delay_s=0.15)) as server:
        before = metrics(server.url)
        outcomes = asyncio.run(_burst(server.url, [solid_png(c) for c in unique_colours(BURST, start=400)]))
        admitted = [latency for response, latency in outcomes if response.status_code == 200]
        rejected = []
        for response, latency in outcomes:
            if response.status_code == 200:
                continue
            assert "queue full" in assert_clean_error(response, {expected_status})
            assert response.headers["retry-after"] == "2"
            rejected.append(latency)
        after = metrics(server.url)
        assert len(rejected) >= BURST // 4, (len(admitted), len(rejected))
        assert len(admitted) >= QUEUE_SIZE, len(admitted)
        assert failures(after, "rejected") - failures(before, "rejected") == len(rejected)
        assert failures(after, "expired") == failures(before, "expired")
        assert max(admitted) < DEADLINE_MS / 1000
        with httpx.Client(timeout=10) as client:  # recovery: the queue is empty, everything is served again
            recovered = [post_image(client, server.url, solid_png(c)) for c in unique_colours(8, start=600)]
            assert [r.status_code for r in recovered] == [200] * 8
            assert client.get(server.url + "/health/ready").status_code == 200
        assert metrics(server.url)["fcn_queue_depth"] == 0
        return {
            "burst": BURST,
            "admitted": len(admitted),
            "rejected": len(rejected),
            "reject_p99_ms": 1000 * percentile(rejected, 99),
            "admitted_p50_ms": 1000 * percentile(admitted, 50),
            "admitted_p99_ms": 1000 * percentile(admitted, 99),
        }


def test_burst_is_shed_with_retry_after_and_admitted_requests_finish(tmp_path: Path) -> None:
    figures = run_burst(tmp_path)
    print(f"burst figures: {figures}")


def test_rejection_does_not_wait_for_the_model(tmp_path: Path) -> None:
    """With the model busy (2.5 s per batch) and the queue full, each further request is refused at once."""
    settings = {**OVERLOAD_SETTINGS, "deadline_ms": 15_000, "max_batch_size": QUEUE_SIZE}
    with fake_server(tmp_path, settings, FakeSpec(delay_s=2.5)) as server:
        calls = tmp_path / "backend-calls.jsonl"
        fill = unique_colours(1 + QUEUE_SIZE, start=700)  # one running request, a full queue behind it
        with httpx.Client(timeout=20) as client, concurrent.futures.ThreadPoolExecutor(len(fill)) as pool:
            admitted = [pool.submit(post_image, client, server.url, solid_png(fill[0]))]
            assert wait_until(lambda: fill[0] in seen_marks(calls), 5.0)  # the first batch is running
            admitted += [pool.submit(post_image, client, server.url, solid_png(c)) for c in fill[1:]]
            assert wait_until(lambda: metrics(server.url)["fcn_queue_depth"] == QUEUE_SIZE, 5.0)
            latencies = []
            for colour in unique_colours(20, start=800):
                start = time.perf_counter()
                response = post_image(client, server.url, solid_png(colour))
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 429 and response.headers["retry-after"] == "2"
            assert [f.result().status_code for f in admitted] == [200] * len(fill)
    p99_ms = 1000 * percentile(latencies, 99)
    print(f"reject latency, queue full: p50 {1000 * percentile(latencies, 50):.1f} ms, p99 {p99_ms:.1f} ms")
    assert p99_ms < 250, latencies  # a batch takes 2500 ms: a rejection never waits for one


def test_queue_full_status_503_by_configuration(tmp_path: Path) -> None:
    assert run_burst(tmp_path, 503)["rejected"] >= BURST // 4
