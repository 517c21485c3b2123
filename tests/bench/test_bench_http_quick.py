"""``python -m bench.http --quick`` against real server processes (batching on and off), loopback only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import http
from bench.report import render


def test_quick_http_sweep_against_started_servers(tiny_fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    code = http.main([
        "--quick", "--model", str(tiny_fp32), "--compare-no-batching", "--server-env", "FCN_WARMUP=false",
        "--out-dir", str(out), "--name", "http-test",
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "http-test.json").read_text())
    rows = report["results"]
    closed = [r for r in rows if r["mode"] == "closed"]
    assert {(r["server"], r["concurrency"]) for r in closed} == {
        (s, c) for s in ("batching", "no-batching") for c in (1, 4)
    }
    assert {r["server"] for r in rows if r["mode"] == "open"} == {"batching", "no-batching"}
    for row in rows:
        assert row["errors"] == {} and row["ok"] == row["requests"] > 0
        assert row["p50_ms"] <= row["p99_ms"]
        assert row["mean_batch_size"] >= 1
        assert row["metrics_inference_ms"] is not None and row["metrics_inference_ms"] > 0
    assert all(r["mean_batch_size"] == 1 for r in rows if r["server"] == "no-batching")
    assert report["raw_forward"]["batch1_ms"] > 0
    statuses = {t["target"]: t["status"] for t in report["targets"]}
    assert statuses["errors in the closed-loop sweep"] == "met"
    assert (out / "http-test.csv").exists() and (out / "http-test.png").stat().st_size > 0
    assert "| no-batching | c=4 | 6/6 |" in render(out)


def test_refuses_a_non_loopback_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert http.main(["--url", "http://203.0.113.7:8000", "--out-dir", str(tmp_path)]) == 1
    assert "loopback" in capsys.readouterr().err
