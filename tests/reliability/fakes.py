"""A scriptable fake backend: slow, failing or hanging on demand, and logging every batch it receives.

Behaviour is keyed on the colour of each image's top-left pixel, so tests choose which requests misbehave
regardless of warm-up batches: an image whose first pixel is ``POISON`` makes its whole batch raise
``PoisonedBatchError``; ``HANG`` makes the batch sleep ``hang_s``. Labels are ``red // 13`` like the tiny
ONNX model. Each call appends one JSON line (time, batch shape, first pixel of each image) to ``log_path``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.metadata import ModelMetadata

POISON: tuple[int, int, int] = (255, 0, 255)
HANG: tuple[int, int, int] = (0, 255, 255)
FAKE_ENV = "RELIABILITY_FAKE_BACKEND"
"""Environment variable holding the FakeSpec as JSON for the launcher subprocess."""


class PoisonedBatchError(RuntimeError):
    """Raised by the fake backend for a batch that contains a POISON image."""


@dataclass
class FakeSpec:
    """How the fake backend behaves: seconds per batch, seconds a HANG batch sleeps, where to log."""

    delay_s: float = 0.0
    hang_s: float = 30.0
    log_path: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> FakeSpec:
        return cls(**json.loads(text))


@dataclass
class FakeBackend:
    """Implements the backend interface: ``run(uint8 [N,H,W,3]) -> uint8 [N,H,W]`` plus descriptive fields."""

    spec: FakeSpec = field(default_factory=FakeSpec)
    name: str = "fake"
    provider: str = "FakeExecutionProvider"
    fallback: tuple = ()
    precision: str = "fp32"
    instances: int = 1
    selection: dict[str, Any] = field(default_factory=dict)
    metadata: ModelMetadata = field(default_factory=lambda: ModelMetadata(name="fake", width=1 / 32))
    calls: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, images: np.ndarray) -> np.ndarray:
        marks = [tuple(int(v) for v in img[0, 0]) for img in images]
        entry = {"t": time.time(), "shape": list(images.shape), "marks": marks}
        with self._lock:
            self.calls.append(entry)
            if self.spec.log_path:
                with open(self.spec.log_path, "a") as log:
                    log.write(json.dumps(entry) + "\n")
        if POISON in marks:
            raise PoisonedBatchError("batch contains the poison pixel")
        if HANG in marks:
            time.sleep(self.spec.hang_s)
        if self.spec.delay_s:
            time.sleep(self.spec.delay_s)
        return (images[..., 0] // 13).astype(np.uint8)

    def close(self) -> None:
        """Nothing to release."""


def read_calls(log_path: Path) -> list[dict[str, Any]]:
    """The batches a fake backend in another process logged so far."""
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]


def seen_marks(log_path: Path) -> set[tuple[int, int, int]]:
    """Every first-pixel colour that reached the fake backend."""
    return {tuple(mark) for call in read_calls(log_path) for mark in call["marks"]}  # type: ignore[misc]
