"""The real server over the scriptable fake backend; the launcher itself is ``tests/serverproc.py``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.serverproc import REPO_ROOT, ServerProcess, running_server, spawn

from .fakes import FAKE_ENV, FakeSpec

__all__ = ["FAKE_BASE", "REPO_ROOT", "ServerProcess", "fake_server", "running_server", "spawn"]

FAKE_BASE: dict[str, object] = {
    "model": "fake.onnx",
    "max_side": 128,
    "bucket": 64,
    "max_body_bytes": 300_000,
    "max_pixels": 1_000_000,
    "warmup": False,
}
"""Settings every fake-backend server starts from (no warm-up: the fake's delays apply to every call)."""


@contextlib.contextmanager
def fake_server(tmp: Path, settings: Mapping[str, object], spec: FakeSpec) -> Iterator[ServerProcess]:
    """The real server process over the scriptable fake backend; ``spec.log_path`` defaults into ``tmp``."""
    if spec.log_path is None:
        spec.log_path = str(tmp / "backend-calls.jsonl")
    with running_server(
        {**FAKE_BASE, **settings},
        tmp / "server.log",
        module="tests.reliability.launcher",
        extra_env={FAKE_ENV: spec.to_json()},
    ) as server:
        yield server
