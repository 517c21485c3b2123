"""The pure pieces of the naive comparison: stage and CPU accounting, ratios and targets, label agreement,
process CPU from /proc, PNG levels."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from bench import baseline, overhead
from bench.agreement import Responses, agreement, png_labels
from bench.http import Snapshot, accumulated, level_costs, parse_metrics, stage_delta
from bench.procstat import CpuSample, cpu_sample
from common.classes import flat_palette, voc_palette

STAGES_BEFORE = """fcn_stage_seconds_sum{stage="decode"} 0.1
fcn_stage_seconds_count{stage="decode"} 10.0
fcn_stage_seconds_sum{stage="infer"} 1.0
fcn_stage_seconds_count{stage="infer"} 10.0
fcn_stage_seconds_sum{stage="encode"} 0.0
fcn_stage_seconds_count{stage="encode"} 10.0
fcn_inference_seconds_sum 1.0
fcn_inference_images_total 10.0
"""
STAGES_AFTER = """fcn_stage_seconds_sum{stage="decode"} 0.3
fcn_stage_seconds_count{stage="decode"} 30.0
fcn_stage_seconds_sum{stage="infer"} 3.0
fcn_stage_seconds_count{stage="infer"} 30.0
fcn_stage_seconds_sum{stage="encode"} 0.05
fcn_stage_seconds_count{stage="encode"} 30.0
fcn_inference_seconds_sum 1.5
fcn_inference_images_total 30.0
"""


def test_stage_means_and_cpu_split_per_request() -> None:
    before, after = parse_metrics(STAGES_BEFORE), parse_metrics(STAGES_AFTER)
    stages = stage_delta(before, after)
    assert stages == pytest.approx({"decode": 10.0, "infer": 100.0, "encode": 2.5})
    start = Snapshot(before, CpuSample(10.0, 2.0), 1.0)
    end = Snapshot(after, CpuSample(12.0, 2.5), 1.4)
    row = level_costs(start, end, ok=20, seconds=4.0)
    assert row["cpu_ms_per_request"] == pytest.approx(100.0)  # 2 s / 20
    assert row["loop_cpu_ms_per_request"] == pytest.approx(25.0)
    assert row["codec_cpu_ms_per_request"] == pytest.approx(12.5)  # decode + encode; infer is wall time
    assert row["other_cpu_ms_per_request"] == pytest.approx(100.0 - 25.0 - 12.5)
    assert row["client_cpu_ms_per_request"] == pytest.approx(20.0)
    assert row["infer_ms_per_image"] == pytest.approx(25.0)  # 0.5 s of batches / 20 images
    assert row["server_cpu_cores"] == pytest.approx(0.5)
    naive = level_costs(
        Snapshot({}, CpuSample(1.0, 0.5), 0.0), Snapshot({}, CpuSample(2.0, 0.6), 0.0), 10, 2.0
    )
    assert naive["stage_ms"] == {} and naive["codec_cpu_ms_per_request"] is None
    assert naive["other_cpu_ms_per_request"] == pytest.approx(90.0)


def test_rounds_add_up_to_one_level() -> None:
    before, after = parse_metrics(STAGES_BEFORE), parse_metrics(STAGES_AFTER)
    first = (Snapshot(before, CpuSample(10.0, 2.0), 1.0), Snapshot(after, CpuSample(12.0, 2.5), 1.4))
    second = (Snapshot(after, CpuSample(20.0, 3.0), 2.0), Snapshot(before, CpuSample(20.0, 3.0), 2.0))
    start, end = accumulated([first, first])
    whole, one = level_costs(start, end, ok=40, seconds=8.0), level_costs(*first, ok=20, seconds=4.0)
    assert whole.pop("stage_ms") == pytest.approx(one.pop("stage_ms"))
    assert whole == pytest.approx(one)
    start, end = accumulated([first, second])  # a round with the opposite counts cancels the first
    assert stage_delta(start.metrics, end.metrics) == {"decode": None, "infer": None, "encode": None}
    assert end.cpu == CpuSample(2.0, 0.5) and end.client_cpu_s == pytest.approx(0.4)


def test_process_cpu_counts_work() -> None:
    before = cpu_sample(os.getpid())
    deadline = time.thread_time() + 0.3
    while time.thread_time() < deadline:
        pass
    used = cpu_sample(os.getpid()) - before
    assert used.total_s >= 0.2 and used.main_thread_s >= 0.2  # pytest runs tests on the main thread


def _row(
    server: str, kind: str, c: int, rps: float, p50: float, errors: dict[str, int] | None = None
) -> dict:
    return {"server": server, "kind": kind, "mode": "closed", "concurrency": c, "throughput_rps": rps,
            "p50_ms": p50, "errors": errors or {}}  # fmt: skip


def test_ratios_and_targets_come_from_the_rows() -> None:
    rows = [
        _row("service", "service", 1, 10.0, 40.0), _row("service", "service", 16, 30.0, 500.0),
        _row("int8", "service", 1, 12.0, 30.0), _row("int8", "service", 16, 50.0, 300.0),
        _row("sloppy", "service", 1, 20.0, 10.0), _row("sloppy", "service", 16, 90.0, 100.0),
        _row("naive-plain", "naive", 1, 8.0, 50.0), _row("naive-plain", "naive", 16, 20.0, 800.0),
        _row("naive-graph", "naive", 1, 9.0, 45.0), _row("naive-graph", "naive", 16, 25.0, 640.0),
    ]  # fmt: skip
    found = {
        "service": {"agreement": 1.0, "identical_share": 1.0},
        "int8": {"agreement": 0.995, "identical_share": 0.0},
        "sloppy": {"agreement": 0.9, "identical_share": 0.0},
    }
    comparison = baseline.compare(rows, found, best_raw=40.0)
    service = comparison["servers"]["service"]
    assert service["throughput_vs_naive"] == pytest.approx({"1": 10 / 8, "16": 30 / 20})
    assert service["throughput_vs_naive_graph"]["16"] == pytest.approx(30 / 25)
    assert service["p50_vs_naive"]["1"] == pytest.approx(40 / 50)
    assert service["throughput_vs_best_raw"]["16"] == pytest.approx(30 / 40)
    targets = {t["target"].split(",")[-1].strip(): t for t in baseline.naive_targets(rows, comparison)}
    identical = targets["labels identical to ORT FP32"]
    assert (identical["server"], identical["value"], identical["status"]) == ("service", 1.5, "met")
    fastest = targets["fastest with label agreement >= 99%"]  # sloppy is faster but disagrees
    assert (fastest["server"], fastest["value"], fastest["status"]) == ("int8", 2.5, "met")
    p50 = targets["p50 at c=1 / naive p50 at c=1"]
    assert (p50["server"], p50["value"], p50["status"]) == ("int8", 30 / 50, "met")
    raw = targets["throughput at c=16 / best raw throughput"]
    assert (raw["server"], raw["value"], raw["status"]) == ("int8", 50 / 40, "met")
    assert targets["errors in every level of every server"]["status"] == "met"
    rows[0]["errors"] = {"503": 1}
    found["service"]["identical_share"] = 0.99
    targets = baseline.naive_targets(rows, baseline.compare(rows, found, best_raw=40.0))
    assert [t["status"] for t in targets][::4] == ["missed", "missed"]  # none identical; one error


def _png(labels: np.ndarray) -> bytes:
    image = Image.fromarray(labels, mode="P")
    image.putpalette(flat_palette(voc_palette(21)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_agreement_weights_every_response() -> None:
    reference = np.zeros((4, 5), dtype=np.uint8)
    off = reference.copy()
    off[0, :2] = 3  # 2 of 20 pixels differ
    responses = Responses()
    for body in (_png(reference), _png(reference), _png(reference), _png(off)):
        responses.add(0, body)
    assert len(responses.bodies) == 2  # identical bodies are stored once
    assert np.array_equal(png_labels(_png(off)), off)
    found = agreement(responses, [reference])
    assert found["responses"] == 4
    assert found["agreement"] == pytest.approx((3 + 0.9) / 4)
    assert found["worst"] == pytest.approx(0.9) and found["identical_share"] == pytest.approx(0.75)
    wrong_size = Responses()
    wrong_size.add(0, _png(np.zeros((5, 4), dtype=np.uint8)))
    assert agreement(wrong_size, [reference])["agreement"] == 0.0


def test_png_levels_find_the_services_level() -> None:
    labels = np.zeros((64, 96), dtype=np.uint8)
    labels[10:40, 20:70] = 15
    labels[30:60, 50:90] = 7
    rows = overhead.png_levels([labels], voc_palette(21), repeats=1)
    assert [r["level"] for r in rows] == list(overhead.PNG_LEVELS)
    assert sum(r["service_default"] for r in rows) == 1  # the service's encoder matches exactly one level
    assert all(r["cpu_ms"] >= 0 and r["bytes"] > 0 for r in rows)
    assert overhead.recommendation(rows)
    assert overhead.log_line_us(repeats=50) > 0
