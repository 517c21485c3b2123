"""A bounded schemathesis run against the real server's own ``/openapi.json``: no 5xx, responses conform."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .serverproc import ServerProcess

MAX_TIME_S = 20
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_no_server_error(tiny_server: ServerProcess, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is pinned in requirements/dev.txt: make install-dev"
    command = [
        st, "run", f"{tiny_server.url}/openapi.json", "--checks", CHECKS, "--max-examples", "25",
        "--max-time", str(MAX_TIME_S), "--seed", "1", "--workers", "1", "--request-timeout", "10",
        "--no-color", "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=MAX_TIME_S + 60, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated is not None, output[-3000:]
    assert int(generated.group(1)) == int(generated.group(2)) >= 100, generated.group(0)
    assert "5 selected" in output  # /segment, /v1/model, /metrics and both health endpoints
    assert tiny_server.proc.poll() is None
