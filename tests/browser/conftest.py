"""Fixtures for the browser tests: a real ``python -m server`` process and Debian's headless Chromium."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.settings import DEFAULT_MODEL
from tests.browser.helpers import TWO_MODELS, open_page
from tests.serverproc import running_server

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


@contextlib.contextmanager
def run_server(workdir: Path, **settings: str) -> Iterator[Server]:
    """``python -m server`` on a free loopback port with a small body limit, stopped with SIGTERM.

    It serves the default (demo) model, or the one ``FCN_MODEL`` in the environment names; ``settings``
    adds ``FCN_<NAME>`` variables.
    """
    values: dict[str, object] = {
        "max_body_bytes": MAX_BODY_BYTES,
        "max_side": 256,  # the test scenes are smaller; fewer bucket shapes to warm up
        "bucket": 64,
        "max_batch_size": 2,  # one page, one image at a time: a small warm-up batch
        "instances": 1,
        "threads_per_instance": 2,
        "log_format": "text",
        **settings,
    }
    if "FCN_MODEL" in os.environ:
        values.setdefault("model", os.environ["FCN_MODEL"])
    with running_server(values, workdir / "server.log") as process:
        yield Server(
            url=process.url,
            max_body_bytes=MAX_BODY_BYTES,
            log_path=process.log_path,
            api_key=settings.get("api_key"),
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The server the page tests run against (the shipped demo model, or FCN_MODEL)."""
    with run_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture(scope="module")
def two_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on a model repository (``FCN_MODEL_REPOSITORY``) of two models, ``TWO_MODELS``."""
    workdir = tmp_path_factory.mktemp("two-models")
    model_file = Path(os.environ.get("FCN_MODEL", DEFAULT_MODEL)).resolve()
    for name, version in TWO_MODELS.items():
        folder = workdir / "repository" / name / str(version)
        folder.mkdir(parents=True)
        (folder / "model.onnx").symlink_to(model_file)
    with run_server(workdir, model_repository=str(workdir / "repository"), warmup="false") as running:
        yield running


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[Server]:
    """A server that wants the API key ``API_KEY`` in ``X-API-Key``."""
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
    """``open_page`` on the demo model's server."""
    with open_page(browser, server) as tab:
        yield tab
