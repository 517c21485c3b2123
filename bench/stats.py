"""Latency summaries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99, mean, min and max of latencies given in seconds, returned in milliseconds."""
    if not samples_s:
        raise ValueError("no samples")
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }
