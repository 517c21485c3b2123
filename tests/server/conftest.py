"""Shared fixtures of the server tests: images, real server processes, a tiny exported ONNX model."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serverproc import REPO_ROOT, ServerProcess, free_port, spawn

DEMO_ONNX = REPO_ROOT / "models" / "demo" / "fcn8s-demo.onnx"


def png_bytes(array: np.ndarray, **save: object) -> bytes:
    """Encode an array (or PIL-compatible data) as PNG."""
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG", **save)
    return out.getvalue()


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (blocks of colour, so it compresses and has structure)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST))
    big = big.copy()
    big[0, 0] = (200, 200, 200)  # never the fake backend's SLOW/FAIL colours
    return big


def start_server(
    tmp: Path, settings: dict[str, object], module: str = "server", extra_env: dict[str, str] | None = None
) -> ServerProcess:
    """Start ``python -m <module>`` with FCN_* variables on a free loopback port (not waiting), text logs."""
    port = int(settings.get("port", free_port()))  # type: ignore[call-overload]
    values = {"log_level": "info", "log_format": "text", **settings, "port": port}
    return spawn(values, tmp / f"server-{port}.log", module, extra_env)


@contextlib.contextmanager
def running(tmp: Path, settings: dict[str, object], **kwargs: object) -> Iterator[ServerProcess]:
    """A ready server for the ``with`` block; stopped with SIGTERM after it."""
    server = start_server(tmp, settings, **kwargs)  # type: ignore[arg-type]
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


FAKE_SETTINGS: dict[str, object] = {
    "max_batch_size": 4,
    "max_delay_ms": 30,
    "queue_size": 16,
    "max_side": 256,
    "bucket": 64,
    "max_body_bytes": 300_000,
    "max_pixels": 1_000_000,
    "deadline_ms": 5000,
    "model": "fake.onnx",
}


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real uvicorn process serving the fake backend (SLOW images sleep 1.5 s)."""
    tmp = tmp_path_factory.mktemp("fake-server")
    with running(
        tmp, FAKE_SETTINGS, module="tests.server.server_fakes", extra_env={"FAKE_SLOW_S": "1.5"}
    ) as srv:
        yield srv


@pytest.fixture(scope="session")
def onnx_model() -> Path:
    """The shipped demo ONNX (a missing file fails the tests that need it)."""
    assert DEMO_ONNX.is_file(), f"{DEMO_ONNX} is missing (shipped; docs/training.md remakes it)"
    return DEMO_ONNX


@pytest.fixture(scope="session")
def onnx_server(tmp_path_factory: pytest.TempPathFactory, onnx_model: Path) -> Iterator[ServerProcess]:
    """``python -m server`` on the ONNX model of ``onnx_model`` (ONNX Runtime CPU, small max_side)."""
    tmp = tmp_path_factory.mktemp("onnx-server")
    settings = {
        "model": onnx_model,
        "backend": "onnxruntime",
        "max_side": 128,
        "bucket": 32,
        "max_batch_size": 4,
        "max_delay_ms": 50,
    }
    with running(tmp, settings) as server:
        yield server


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``python -m server`` with its defaults (the demo model), no warm-up."""
    # warm-up of all 289 bucket shapes is tested elsewhere; here it would only cost suite time
    with running(tmp_path_factory.mktemp("demo-server"), {"warmup": False}) as server:
        yield server
