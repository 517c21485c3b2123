"""The server tests' fake backend as a loader a Ray replica can import (``tests.ray.fakes:slow_loader``)."""

from __future__ import annotations

from server.settings import Settings
from tests.server.server_fakes import FakeBackend

SLOW_S = 3.0
"""How long a batch holding a SLOW image runs: long enough to shut down while requests are in flight."""


def slow_loader(settings: Settings) -> FakeBackend:
    """A fresh fake backend; batches with a SLOW image take :data:`SLOW_S` seconds."""
    return FakeBackend(slow_s=SLOW_S)
