"""Waiting on observable state instead of sleeping: poll a predicate; read one Prometheus sample."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from bench.prometheus import parse_samples


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds pass; return its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def sample(url: str, name: str) -> float:
    """The value of the Prometheus sample ``name`` (with its other labels, e.g.
    ``fcn_failures_total{reason="expired"}``) at ``url``/metrics, summed over model versions; 0 when the
    server does not list it."""
    return parse_samples(httpx.get(url + "/metrics", timeout=10).text).get(name, 0.0)
