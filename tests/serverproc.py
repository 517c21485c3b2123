"""Start a real server (``python -m server`` or a test launcher module) as a subprocess on loopback.

The one launcher every test area and ``bench.soak`` use: FCN_* variables from a settings mapping, a free
127.0.0.1 port, the output in a log file, readiness polled on ``/health/ready``, SIGTERM to stop.
"""

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

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 90.0


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

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll ``/health/ready`` until 200; fail with the log if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before ready:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health/ready", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
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
    """The child's environment: ours without FCN_*, plus ``FCN_<NAME>`` for each setting, on loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCN_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "log_level": "warning",
        "instances": 1,
        "threads_per_instance": 1,
    }
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
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)


@contextlib.contextmanager
def running_server(
    settings: Mapping[str, object],
    log_path: Path,
    module: str = "server",
    extra_env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """A ready server for the duration of the ``with`` block, stopped (SIGTERM) afterwards."""
    server = spawn(settings, log_path, module, extra_env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
