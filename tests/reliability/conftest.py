"""Fixtures of the reliability tests: tiny ONNX models and real server processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .models import write_models
from .serverproc import ServerProcess, running_server

TINY_SETTINGS: dict[str, object] = {
    "max_side": 256,
    "bucket": 64,
    "max_batch_size": 4,
    "max_delay_ms": 5,
    "queue_size": 64,
    "max_body_bytes": 300_000,
    "max_pixels": 6_000_000,
    "max_form_parts": 4,
    "max_header_bytes": 8192,
    "deadline_ms": 10_000,
}
"""The real ``python -m server`` on the tiny ONNX model: small limits so tests can exceed them cheaply."""

DEPLOY_ENV = {"MALLOC_ARENA_MAX": "2"}
"""The environment docs/reliability.md recommends: glibc otherwise gives each of the
server's worker threads its own malloc arena, and RSS climbs for the first ~30 s under load before it
levels off (about +50% instead of +15%), which a 20 s test cannot tell from a leak."""


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The good, truncated, wrong-architecture and missing model paths."""
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
) -> Iterator[ServerProcess]:
    """``python -m server`` (ONNX Runtime, CPU) on the tiny model with TINY_SETTINGS, one per session."""
    log = tmp_path_factory.mktemp("tiny-server") / "server.log"
    with running_server({**TINY_SETTINGS, "model": tiny_models["good"]}, log, extra_env=DEPLOY_ENV) as server:
        yield server
