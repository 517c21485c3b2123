"""The prepared GPU check (``bench.gpu_check``, ``scripts/gpu-check.sh``) and ``bench.forward --gpu``: what
runs without a GPU runs here (weights from the ONNX, the numerics on the CPU, the CUDA-buffer check on the
fake CUDA runtime), and every GPU part skips with its reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bench import forward, gpu_check
from bench.backends import GPU_BACKENDS
from common.metadata import Normalization
from export.graph import Normalize
from tests.trtfake import install

REPO = Path(__file__).resolve().parents[2]


def test_arguments_and_defaults(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    args = gpu_check.parse_args([])
    assert args.out_dir == tmp_path / "gpu-check" and args.budget_s == 420 and not args.cpu_only
    assert args.onnx == gpu_check.DEMO_FP32 and args.fp16_onnx == gpu_check.DEMO_FP16
    for bad in (["--budget-s", "0"], ["--size", "4"], ["--onnx", str(tmp_path / "missing.onnx")]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_the_script_is_bounded_and_uses_the_module() -> None:
    text = (REPO / "scripts" / "gpu-check.sh").read_text()
    assert "timeout" in text and "-m bench.gpu_check" in text and "$OUT" in text
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu-check.sh")], check=False).returncode == 0


def test_weights_come_from_the_onnx_including_shared_initializers() -> None:
    """The exporter stores the two equal bilinear upsamplers once; the node metadata still names both."""
    weights = gpu_check.onnx_weights(onnx.load(str(gpu_check.DEMO_FP16)))
    np.testing.assert_array_equal(weights["upscore_pool4.weight"], weights["upscore2.weight"])
    network, metadata = gpu_check.network_from_onnx(onnx.load(str(gpu_check.DEMO_FP16)))
    assert metadata.architecture == "fcn8s" and network.upscore_pool4.groups == metadata.num_classes


def test_a_run_without_a_gpu_runs_the_portable_parts_and_skips_the_rest(tmp_path: Path, capsys) -> None:
    code = gpu_check.main(["--out-dir", str(tmp_path), "--images", "8", "--size", "64", "--budget-s", "300"])
    assert code == 0
    outcomes = {o["name"]: o for o in json.loads((tmp_path / "gpu-check.json").read_text())["outcomes"]}
    assert list(outcomes) == ["environment", "fp16-numerics", "cuda-buffers", "forward"]
    assert outcomes["environment"]["status"] == "passed"
    numerics = outcomes["fp16-numerics"]
    assert numerics["status"] == "passed", numerics
    assert numerics["details"]["torch_cpu_fp32_vs_reference"] >= gpu_check.FP32_GATE
    assert numerics["details"]["fp16_cpu_emulation_vs_fp32"] >= gpu_check.FP16_GATE
    assert (
        outcomes["cuda-buffers"]["status"] == "skipped"
        and "cuda-python" in outcomes["cuda-buffers"]["reason"]
    )
    assert outcomes["forward"] == {**outcomes["forward"], "status": "skipped", "reason": "no CUDA GPU"}
    printed = capsys.readouterr().out
    assert "[gpu-check] fp16-numerics: PASSED" in printed and "check           status" in printed


def test_the_cuda_buffer_check_passes_on_the_fake_cuda_runtime(monkeypatch, tmp_path: Path) -> None:
    """The check's own logic (the copy engine, the runner path, its assertions) before a GPU runs it."""
    fake = install(monkeypatch)
    monkeypatch.setattr(gpu_check, "_cuda", lambda: True)
    details = gpu_check.cuda_buffers(gpu_check.parse_args(["--out-dir", str(tmp_path)]))
    assert details["gpu"] == fake.device.gpu[0] and details["runs"] == 3
    assert ("D2D", 2 * 64 * 96) in fake.device.copies and fake.device.buffers == {}


def test_the_forward_check_skips_without_a_gpu_or_time(monkeypatch, tmp_path: Path) -> None:
    args = gpu_check.parse_args(["--out-dir", str(tmp_path)])
    with pytest.raises(gpu_check.Skip, match="no CUDA GPU"):
        gpu_check.forward(args, 400)
    monkeypatch.setattr(gpu_check, "_cuda", lambda: True)
    with pytest.raises(gpu_check.Skip, match="budget"):
        gpu_check.forward(args, 30)


def test_forward_gpu_rows_say_why_they_cannot_run_here(tmp_path: Path) -> None:
    args = forward.parse_args(["--gpu"])
    assert args.backends == list(GPU_BACKENDS) and args.no_peak
    assert forward.main(["--gpu", "--quick", "--out-dir", str(tmp_path), "--no-plot"]) == 1  # nothing ran
    report = json.loads((tmp_path / "forward.json").read_text())
    assert set(report["skipped"]) == set(GPU_BACKENDS) and report["results"] == []
    assert "onnxruntime-gpu" in report["skipped"]["ort-cuda-fp32"]
    assert "torch.cuda.is_available() is False" in report["skipped"]["torch-cuda-fp16-graph"]
    assert report["peak"]["gflops"] is None


@pytest.mark.parametrize("normalization", [Normalization.caffe(), Normalization()], ids=["caffe", "rgb"])
def test_the_fp16_graph_normalises_like_the_deployable_graph(normalization: Normalization) -> None:
    """HalfFCN keeps its normalisation constants as buffers (a CUDA graph cannot capture their upload)."""
    from bench.cuda import HalfFCN

    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (2, 9, 13, 3), dtype=np.uint8))
    half = HalfFCN(torch.nn.Conv2d(3, 2, 1), normalization)
    torch.testing.assert_close(half.normalize(images), Normalize(normalization)(images), rtol=0, atol=0)
    assert half.mean.dtype == torch.float32 and half.model.weight.dtype == torch.float16


def test_a_check_outcome_for_each_way_it_can_end() -> None:
    def missing() -> dict:
        import no_such_package_here  # noqa: F401

        return {}

    def wrong() -> dict:
        raise AssertionError("FP16 agrees on 90%")

    def crash() -> dict:
        raise RuntimeError("CUDA error")

    assert gpu_check.run_check("a", missing).status == "skipped"
    assert "no_such_package_here" in gpu_check.run_check("a", missing).reason
    assert (gpu_check.run_check("b", wrong).status, gpu_check.run_check("b", wrong).reason) == (
        "failed",
        "FP16 agrees on 90%",
    )
    crashed = gpu_check.run_check("c", crash)
    assert crashed.status == "failed" and "RuntimeError: CUDA error" in crashed.reason
    assert crashed.details["traceback"]
    assert gpu_check.run_check("d", lambda: {"x_vs_y": 1.0}).status == "passed"
