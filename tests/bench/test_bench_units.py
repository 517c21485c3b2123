"""Small pure pieces of the benchmarks: statistics, machine naming, metrics parsing, loopback guard."""

from __future__ import annotations

import numpy as np
import pytest

from bench.http import Level, Sample, check_loopback, metrics_delta, parse_metrics, summarize
from bench.images import encoded_photographs, photograph_batch
from bench.machine import describe_machine, machine_slug
from bench.stats import percentiles

METRICS_TEXT = """# HELP fcn_queue_seconds Time an image waited
# TYPE fcn_queue_seconds histogram
fcn_queue_seconds_bucket{le="0.001"} 3.0
fcn_queue_seconds_sum 0.5
fcn_queue_seconds_count 10.0
fcn_inference_seconds_sum 2.0
fcn_inference_seconds_count 4.0
fcn_batch_size_sum 10.0
fcn_batch_size_count 4.0
fcn_requests_total{status="200"} 10.0
"""


def test_percentiles_in_milliseconds() -> None:
    stats = percentiles([i / 1000 for i in range(1, 101)])
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p99_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert stats["min_ms"] == pytest.approx(1) and stats["max_ms"] == pytest.approx(100)
    with pytest.raises(ValueError):
        percentiles([])


def test_machine_description_and_slug() -> None:
    machine = describe_machine()
    assert machine["cores"] >= 1 and "numpy" in machine["libraries"]
    slug = machine_slug(machine)
    assert slug and slug == slug.lower() and " " not in slug
    assert machine_slug({"cpu_model": "AMD EPYC 9R45", "cores": 2, "simd": ["avx2", "avx512f"]}) == (
        "amd-epyc-9r45-2c-avx512"
    )
    assert machine_slug({"gpu": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"


def test_metrics_parsing_and_level_means() -> None:
    after = parse_metrics(METRICS_TEXT)
    assert after["fcn_queue_seconds_count"] == 10.0
    assert after['fcn_requests_total{status="200"}'] == 10.0  # labelled series keep their labels
    before = {"fcn_queue_seconds_sum": 0.1, "fcn_queue_seconds_count": 2.0}
    delta = metrics_delta(before, after)
    assert delta["metrics_queue_ms"] == pytest.approx(400 / 8)
    assert delta["metrics_inference_ms"] == pytest.approx(500)
    assert delta["metrics_batch_size"] == pytest.approx(2.5)
    assert metrics_delta(after, after)["metrics_queue_ms"] is None


def test_level_summary_counts_errors_by_status() -> None:
    level = Level("closed", 2, None, seconds=2.0)
    level.samples = [Sample(0.1, 200, 2, 1.0, 50.0), Sample(0.3, 200, 1, 3.0, 60.0), Sample(0.01, 429)]
    level.samples.append(Sample(0.02, "ConnectError"))
    row = summarize(level, "batching", {})
    assert row["ok"] == 2 and row["requests"] == 4
    assert row["throughput_rps"] == pytest.approx(1.0)
    assert row["errors"] == {"429": 1, "ConnectError": 1}
    assert row["mean_batch_size"] == pytest.approx(1.5)
    assert row["p50_ms"] == pytest.approx(200)


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000", "http://example.com", "http://192.168.1.2"])
def test_only_loopback_targets(url: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        check_loopback(url)


def test_loopback_targets_pass() -> None:
    assert check_loopback("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_loopback("http://[::1]:9000") == "http://[::1]:9000"


def test_photographs_are_real_and_resized() -> None:
    batch = photograph_batch(6, 40, 60)
    assert batch.shape == (6, 40, 60, 3) and batch.dtype == np.uint8
    assert batch.std() > 20  # photographs, not a flat fill
    assert not np.array_equal(batch[0], batch[1]) and np.array_equal(batch[0], batch[5])
    bodies = encoded_photographs(120)
    assert len(bodies) == 5 and all(body[1][:2] == b"\xff\xd8" for body in bodies)  # JPEG magic
