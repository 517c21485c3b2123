"""Fixtures for the browser tests: a real ``python -m server`` process and Debian's headless Chromium."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.settings import DEFAULT_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MAX_BODY_BYTES = 400_000
"""Body limit of the test server: the scenes fit, the oversized upload does not."""
READY_TIMEOUT_S = 90.0
API_KEY = "browser-test-key"


@dataclass(frozen=True)
class Server:
    """A running server process: its base URL, body limit, API key (if any) and log file."""

    url: str
    max_body_bytes: int
    log_path: Path
    api_key: str | None = None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        try:
            if httpx.get(f"{url}/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text(errors='replace')}")


@contextlib.contextmanager
def run_server(workdir: Path, **settings: str) -> Iterator[Server]:
    """``python -m server`` on a free loopback port with a small body limit, stopped with SIGTERM.

    It serves the default (demo) model, or the one ``FCN_MODEL`` in the environment names; ``settings``
    adds ``FCN_<NAME>`` variables.
    """
    port = _free_port()
    log_path = workdir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCN_") or k == "FCN_MODEL"}
    env.update(
        PYTHONUNBUFFERED="1",
        FCN_HOST="127.0.0.1",
        FCN_PORT=str(port),
        FCN_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        FCN_MAX_SIDE="256",  # the test scenes are smaller; fewer bucket shapes to warm up
        FCN_BUCKET="64",
        FCN_MAX_BATCH_SIZE="2",  # one page, one image at a time: a small warm-up batch
        FCN_ORT_INTRA_OP_THREADS="2",
        FCN_LOG_FORMAT="text",
    )
    env.update({f"FCN_{name.upper()}": value for name, value in settings.items()})
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_ready(url, proc, log_path)
        yield Server(
            url=url, max_body_bytes=MAX_BODY_BYTES, log_path=log_path, api_key=settings.get("api_key")
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _skip_without_model() -> None:
    if "FCN_MODEL" not in os.environ and not DEFAULT_MODEL.is_file():
        pytest.skip(f"the demo model {DEFAULT_MODEL.relative_to(REPO_ROOT)} is not there yet")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The server the page tests run against (skips while the demo model is not shipped)."""
    _skip_without_model()
    with run_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[Server]:
    """A server that wants the API key ``API_KEY`` in ``X-API-Key``."""
    _skip_without_model()
    with run_server(tmp_path, api_key=API_KEY, warmup="false") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (``playwright install`` cannot download browsers)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: run scripts/install-chromium.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A desktop-sized tab on ``GET /`` with the model information loaded; fails if the page throws."""
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(f"{server.url}/")
    tab.wait_for_function("document.getElementById('model').textContent.startsWith('Model:')")
    yield tab
    tab.close()
    assert errors == [], f"the page threw: {errors}"
