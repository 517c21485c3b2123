"""Helpers of the deployment tests: repository paths, the pinned CLI tools of the venv, subprocess runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
TEST_OVERRIDE = REPO_ROOT / "tests" / "deploy" / "compose.test.yml"
DOCKERFILES = (REPO_ROOT / "docker" / "Dockerfile.cpu", REPO_ROOT / "docker" / "Dockerfile.gpu")
K8S_DIR = REPO_ROOT / "deploy" / "k8s"


def tool(name: str) -> str:
    """Path of a CLI installed by requirements/dev.txt into the running interpreter's environment."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make install-dev` (requirements/dev.txt pins it)")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without COMPOSE_*/FCN_* variables (only the repo's files decide), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "FCN_"))}
    env.update(extra)
    return env


def run(cmd: list[str], timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output (no check: tests assert on the result)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]
