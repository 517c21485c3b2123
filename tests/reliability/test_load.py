"""Sustained load against a real ``python -m server`` process: nothing lost, no 5xx, memory stable."""

from __future__ import annotations

import asyncio

from bench.soak import drive

from . import inputs
from .helpers import failures, metrics
from .serverproc import ServerProcess

CONCURRENCY = 32
DURATION_S = 20.0
WARMUP_S = 8.0


def test_concurrency_32_answers_everything_with_stable_memory(tiny_server: ServerProcess) -> None:
    bodies = [
        (f"{w}x{h}.png", inputs.png(w, h, seed=w + h), "image/png")
        for w, h in ((64, 48), (200, 120), (120, 250), (300, 300), (33, 17))
    ]
    before = metrics(tiny_server.url)
    result = asyncio.run(drive(tiny_server.url, bodies, CONCURRENCY, DURATION_S, tiny_server.proc.pid))
    summary = result.summary(WARMUP_S)
    print(
        f"load figures: sent {result.sent}, statuses {dict(result.statuses)}, "
        f"transport errors {dict(result.transport_errors)}, RSS {summary['rss']}"
    )
    after = metrics(tiny_server.url)
    assert result.sent > 10 * CONCURRENCY, summary
    assert result.sent == result.answered, summary
    assert not result.transport_errors, summary
    assert dict(result.statuses) == {200: result.answered}, summary
    served = after['fcn_requests_total{status="200"}'] - before.get('fcn_requests_total{status="200"}', 0.0)
    assert served == result.answered
    for reason in ("rejected", "expired", "cancelled", "backend"):
        assert failures(after, reason) == failures(before, reason), reason
    growth = summary["rss"]["growth_after_warmup_pct"]
    assert growth is not None and growth < 10.0, summary["rss"]
    assert tiny_server.proc.poll() is None
