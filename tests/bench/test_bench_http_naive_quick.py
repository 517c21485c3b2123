"""``python -m bench.http --quick --compare-naive``: the service, an INT8 variant and the naive baseline
(plain export and the service's graph) started as real processes, one sweep, the report's structure."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bench import http
from bench.baseline import NAIVE, NAIVE_GRAPH
from bench.images import encoded_photographs
from bench.naive import NaiveSegmenter, create_app
from bench.report import render
from common.contract import INPUT_NAME
from common.onnxrt import create_session
from tests.bench.conftest import QUICK_SPEC


def test_naive_server_segments_like_the_deployable_graph(tiny_fp32: Path, tiny_naive: Path) -> None:
    name, body, content_type = encoded_photographs(96)[1]
    rgb = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    expected = create_session(tiny_fp32).run(None, {INPUT_NAME: rgb[None]})[0][0]
    for onnx, graph in ((tiny_naive, "plain"), (tiny_fp32, "deployable")):
        with TestClient(create_app(NaiveSegmenter(onnx, graph))) as client:  # type: ignore[arg-type]
            assert client.get("/health/ready").status_code == 200
            multipart = client.post("/segment", files={"image": (name, body, content_type)})
            raw = client.post("/segment", content=body, headers={"content-type": content_type})
            assert client.post("/segment", content=b"not an image").status_code == 400
        assert multipart.status_code == raw.status_code == 200
        assert multipart.content == raw.content
        labels = np.asarray(Image.open(io.BytesIO(multipart.content)))
        assert labels.shape == rgb.shape[:2]
        agreement = (labels == expected).mean()
        # the same graph: identical; the plain export (dense upsampling, numpy normalisation): float noise
        assert agreement == 1.0 if graph == "deployable" else agreement >= 0.99


def test_quick_naive_comparison(model_cache: Path, tiny_int8: Path, tiny_naive: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    code = http.main([
        "--quick", "--random-width", str(QUICK_SPEC.width), "--cache", str(model_cache), "--compare-naive",
        "--server-env", "FCN_WARMUP=false", "--variant", f"int8:FCN_MODEL={tiny_int8}", "--rounds", "2",
        "--out-dir", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "http-naive.json").read_text())
    assert report["benchmark"] == "http-naive" and report["naive_onnx"] == str(tiny_naive)
    servers = ("service", "int8", NAIVE, NAIVE_GRAPH)
    rows = {(r["server"], r["concurrency"]): r for r in report["results"]}
    assert set(rows) == {(s, c) for s in servers for c in (1, 4)}
    for row in rows.values():
        assert row["errors"] == {} and row["ok"] == row["requests"] > 0
        assert row["cpu_ms_per_request"] > 0 and row["loop_cpu_ms_per_request"] >= 0
    for server in ("service", "int8"):
        stages = rows[server, 4]["stage_ms"]
        assert {"receive", "decode", "queue", "infer", "encode"} <= set(stages) and stages["infer"] > 0
        assert report["servers"][server]["kind"] == "service"
    assert report["servers"]["int8"]["precision"] == "int8"
    assert report["servers"][NAIVE]["kind"] == "naive"
    # ratios are the measured numbers divided, level by level
    comparison, raw = report["comparison"], report["raw_forward"]
    for server in servers:
        for c in (1, 4):
            ratios, row = comparison["servers"][server], rows[server, c]
            assert ratios["throughput_vs_naive"][str(c)] == pytest.approx(
                row["throughput_rps"] / rows[NAIVE, c]["throughput_rps"]
            )
            assert ratios["throughput_vs_naive_graph"][str(c)] == pytest.approx(
                row["throughput_rps"] / rows[NAIVE_GRAPH, c]["throughput_rps"]
            )
            assert ratios["p50_vs_naive"][str(c)] == pytest.approx(row["p50_ms"] / rows[NAIVE, c]["p50_ms"])
            assert ratios["throughput_vs_best_raw"][str(c)] == pytest.approx(
                row["throughput_rps"] / raw["best_raw_images_per_s"]
            )
    assert raw["best_raw_images_per_s"] == max(v for v in raw["methods_images_per_s"].values() if v)
    # the FP32 service returns exactly ORT FP32's labels; every server's answers were checked
    assert report["agreement"]["service"]["identical_share"] == 1.0
    assert all(report["agreement"][s]["responses"] == sum(rows[s, c]["ok"] for c in (1, 4)) for s in servers)
    targets = {t["target"]: t for t in report["targets"]}
    identical = targets["throughput at c=4 / naive, labels identical to ORT FP32"]
    assert identical["server"] == "service"
    assert identical["value"] == pytest.approx(comparison["servers"]["service"]["throughput_vs_naive"]["4"])
    assert targets["errors in every level of every server"]["status"] == "met"
    assert [row["level"] for row in report["overhead"]["png_levels"]] == [1, 3, 6]
    assert (out / "http-naive.csv").exists() and (out / "http-naive.png").stat().st_size > 0
    rendered = render(out)
    assert "| naive-plain | c=4 | 6/6 |" in rendered and "÷ naive-plain" in rendered
