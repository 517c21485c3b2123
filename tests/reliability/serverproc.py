"""Start the real server (``python -m server`` or the fake-backend launcher) as a subprocess on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from .fakes import FAKE_ENV, FakeSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
FAKE_BASE: dict[str, object] = {
    "model": "unused-by-the-fake.onnx",
    "max_side": 128,
    "bucket": 64,
    "max_body_bytes": 300_000,
    "max_pixels": 1_000_000,
    "warmup": False,
}
"""Settings every fake-backend server starts from (no warm-up: the fake's delays apply to every call)."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class ServerProcess:
    """A running server: its base URL, process and log file."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """Send SIGTERM, wait for the exit (kill after ``timeout``) and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def server_env(settings: Mapping[str, object], extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours plus ``FCN_<NAME>`` for each setting, on loopback, text logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCN_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    base: dict[str, object] = {"host": "127.0.0.1", "log_level": "warning", "ort_intra_op_threads": 1}
    for key, value in {**base, **settings}.items():
        env[f"FCN_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update(extra or {})
    return env


def spawn(
    settings: Mapping[str, object],
    log_path: Path,
    module: str = "server",
    extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start ``python -m <module>`` with the settings as FCN_ variables on a free port; do not wait."""
    port = int(settings.get("port", free_port()))  # type: ignore[call-overload]
    env = server_env({**settings, "port": port}, extra_env)
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", module], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    return ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)


def wait_ready(server: ServerProcess, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll ``/health/ready`` until 200; fail with the server log if it exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode} before ready:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/health/ready", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    server.terminate()
    raise RuntimeError(f"server not ready within {timeout} s:\n{server.log()}")


@contextlib.contextmanager
def running_server(
    settings: Mapping[str, object],
    log_path: Path,
    module: str = "server",
    extra_env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """A ready server for the duration of the ``with`` block, terminated (SIGTERM) afterwards."""
    server = spawn(settings, log_path, module, extra_env)
    try:
        wait_ready(server)
        yield server
    finally:
        server.terminate()


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
