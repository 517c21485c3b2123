"""``python -m bench.forward --quick`` runs end to end and writes a consistent report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bench import forward
from bench.backends import Runner
from bench.report import render


def test_quick_forward_report(model_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code = forward.main(["--quick", "--cache", str(model_cache), "--out-dir", str(out), "--note", "test run"])
    assert code == 0
    report = json.loads((out / "forward.json").read_text())
    assert report["model"]["width"] == forward.QUICK_WIDTH and report["note"] == "test run"
    peak = report["peak"]
    assert peak["gflops"] == max(peak["at_start_gflops"], peak["at_end_gflops"]) > 0
    assert peak["method"] in {"fma", "matmul"}
    rows = report["results"]
    assert {(r["backend"], r["batch"]) for r in rows} == {
        (b, n) for b in forward.QUICK_BACKENDS for n in (1, 2)
    }
    for row in rows:
        assert row["runs"] == 3
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1000 / row["p50_ms"])
        expected = report["model"]["gflop_per_image"] * row["batch"] / (row["p50_ms"] / 1000)
        assert row["gflops"] == pytest.approx(expected)
        if row["precision"] == "fp32":
            assert row["peak_share"] == pytest.approx(row["gflops"] / report["peak"]["gflops"])
        else:  # integer work is not a share of the float32 peak
            assert row["peak_share"] is None
        assert row["time_vs_paper_fcn8s"] == pytest.approx(row["ms_per_image"] / 175)
    with (out / "forward.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert (out / "forward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "ort-cpu-int8" in printed and "p50 ms" in printed
    assert report["targets"] == []  # targets apply to the full-size net at 500x500 only
    markdown = render(out)
    assert "#### `forward.json`" in markdown and "| ort-cpu-int8 | 2 |" in markdown


def test_batch_growth_stops_at_the_time_limit() -> None:
    calls: list[int] = []

    def slow(images: object) -> None:
        calls.append(1)

    runner = Runner("fake", "cpu", "fp32", "test", prepare=lambda images: images, run=slow)
    rows, stopped = forward.sweep(
        [runner], [1, 2, 4], 8, 8, warmup=0, runs=2, max_seconds=0.0, budget_s=None, gflop_per_image=1.0,
    )  # fmt: skip
    assert [r["batch"] for r in rows] == [1]
    assert "batch 2 would take" in stopped["fake"]
    assert len(calls) == 2


def test_failing_backend_is_reported_not_fatal() -> None:
    def boom(images: object) -> None:
        raise RuntimeError("out of memory")

    good = Runner("good", "cpu", "fp32", "test", prepare=lambda images: images, run=lambda images: None)
    bad = Runner("bad", "cpu", "fp32", "test", prepare=lambda images: images, run=boom)
    rows, stopped = forward.sweep(
        [good, bad], [1, 2], 8, 8, warmup=1, runs=2, max_seconds=60, budget_s=None, gflop_per_image=1.0,
    )  # fmt: skip
    assert {(r["backend"], r["batch"]) for r in rows} == {("good", 1), ("good", 2)}
    assert "out of memory" in stopped["bad"]


def test_max_batch_caps_one_backend() -> None:
    runners = [
        Runner(name, "cpu", "fp32", "test", prepare=lambda images: images, run=lambda images: None)
        for name in ("capped", "free")
    ]
    rows, stopped = forward.sweep(
        runners, [1, 2, 4], 8, 8, warmup=0, runs=1, max_seconds=60, budget_s=None, gflop_per_image=1.0,
        max_batch={"capped": 2},
    )  # fmt: skip
    assert [r["batch"] for r in rows if r["backend"] == "capped"] == [1, 2]
    assert [r["batch"] for r in rows if r["backend"] == "free"] == [1, 2, 4]
    assert stopped == {"capped": "--max-batch capped=2"}
