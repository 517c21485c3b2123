"""A deterministic fake backend for the server tests, and a launcher that serves it in a real process.

Labels are ``red // 13`` per pixel, so they depend only on the pixel itself (padding cannot change them).
A batch containing an image whose top-left pixel is ``SLOW`` sleeps ``FAKE_SLOW_S`` seconds; one with a
``FAIL`` pixel raises (every batch raises with ``FAKE_BROKEN=1``).
``python -m tests.server.server_fakes`` serves it with the usual FCN_* settings.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from common.metadata import ModelMetadata

SLOW: tuple[int, int, int] = (1, 2, 3)
FAIL: tuple[int, int, int] = (3, 2, 1)


class InjectedFault(RuntimeError):
    """Raised by the fake for a batch containing a FAIL image."""


def fake_labels(images: np.ndarray) -> np.ndarray:
    """The fake model: class = red // 13 (0..19)."""
    return (images[..., 0] // 13).astype(np.uint8)


@dataclass
class FakeBackend:
    """Implements the backend protocol; records the batch sizes it ran."""

    slow_s: float = 1.0
    warmup_s: float = 0.0
    broken: bool = False
    name: str = "fake"
    provider: str = "FakeExecutionProvider"
    fallback: tuple = ()
    precision: str = "fp32"
    instances: int = 1
    selection: dict[str, object] = field(default_factory=dict)
    metadata: ModelMetadata = field(default_factory=lambda: ModelMetadata(name="fake", width=1 / 32))
    batches: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, images: np.ndarray) -> np.ndarray:
        corners = {tuple(int(v) for v in image[0, 0]) for image in images}
        if self.broken or FAIL in corners:
            raise InjectedFault("injected fault")
        if SLOW in corners:
            time.sleep(self.slow_s)
        if self.warmup_s and not self.batches:
            time.sleep(self.warmup_s)
        with self._lock:
            self.batches.append(len(images))
        return fake_labels(images)

    def close(self) -> None:
        pass


def main() -> int:
    from server.__main__ import parse_settings, serve

    backend = FakeBackend(
        slow_s=float(os.environ.get("FAKE_SLOW_S", "1.0")),
        warmup_s=float(os.environ.get("FAKE_WARMUP_S", "0")),
        broken=os.environ.get("FAKE_BROKEN") == "1",
    )
    return serve(parse_settings([]), backend_loader=lambda _: backend)


if __name__ == "__main__":
    sys.exit(main())
