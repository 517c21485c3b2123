"""Waiting on observable state instead of sleeping: poll a predicate; read one Prometheus sample."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds pass; return its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def sample(url: str, name: str) -> float:
    """The value of the Prometheus sample ``name`` (with its labels, e.g. ``fcn_queue_depth``) at
    ``url``/metrics; 0 when the server does not list it."""
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
