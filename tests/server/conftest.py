"""Shared fixtures of the server tests: images, real server processes, a tiny exported ONNX model."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A server subprocess on loopback."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_server(
    tmp: Path, settings: dict[str, object], module: str = "server", extra_env: dict[str, str] | None = None
) -> ServerProcess:
    """Start ``python -m <module>`` with FCN_* variables on a free loopback port (not waiting)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCN_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    values = {"host": "127.0.0.1", "port": port, "log_level": "info", "log_format": "text", **settings}
    for key, value in values.items():
        env[f"FCN_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update(extra_env or {})
    log_path = tmp / f"server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)


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
    "model": "unused.onnx",
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
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo ONNX; without it, a width-1/32 FCN-8s with seeded random weights exported with
    ``export.onnx`` (about 40 s, so only when the demo model is missing)."""
    if DEMO_ONNX.is_file():
        return DEMO_ONNX
    onnx_export = pytest.importorskip(
        "export.onnx", reason="export.onnx (the export helper's module) is missing"
    )
    import torch

    from common.metadata import ModelMetadata
    from training.model import build_model

    torch.manual_seed(0)
    model = build_model("fcn8s", 21, width=1 / 32)
    model.reset_parameters()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith("score"):
                torch.nn.init.normal_(module.weight, std=0.5)
                torch.nn.init.normal_(module.bias, std=0.1)
    model.eval()
    metadata = ModelMetadata(architecture="fcn8s", width=1 / 32, name="tiny-random")
    out = tmp_path_factory.mktemp("tiny-onnx") / "tiny.onnx"
    onnx_export.export_onnx(model, metadata, out, source_sha256="0" * 64, shapes=[(1, 48, 64), (2, 40, 40)])
    return out


@pytest.fixture(scope="session")
def onnx_server(tmp_path_factory: pytest.TempPathFactory, onnx_model: Path) -> Iterator[ServerProcess]:
    """``python -m server`` on the ONNX model of ``onnx_model`` (ONNX Runtime CPU, small max_side)."""
    tmp = tmp_path_factory.mktemp("onnx-server")
    settings = {"model": onnx_model, "max_side": 128, "bucket": 32, "max_batch_size": 4, "max_delay_ms": 50}
    with running(tmp, settings) as server:
        yield server


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``python -m server`` with its defaults (the demo model), no warm-up; skipped until the model exists."""
    if not DEMO_ONNX.is_file():
        pytest.skip(f"the demo model {DEMO_ONNX.relative_to(REPO_ROOT)} is not in the repository yet")
    # warm-up of all 289 bucket shapes is tested elsewhere; here it would only cost suite time
    with running(tmp_path_factory.mktemp("demo-server"), {"warmup": False}) as server:
        yield server
