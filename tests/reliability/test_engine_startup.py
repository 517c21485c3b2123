"""Start-up with a TensorRT engine built elsewhere: refused with one clear line, or ONNX Runtime fallback.

The machine's GPU and TensorRT version are faked (``engine.runtime.environment``) as an H100 with TensorRT
10.13, so the sidecar check runs the same on machines with and without a GPU; the engine never loads.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from common.geometry import Profile
from common.metadata import ModelMetadata
from engine import runtime as rt
from engine.cache import write_build_failure
from engine.spec import Sidecar, write_sidecar
from server.app import create_app
from server.backends.base import BackendError
from server.backends.select import Environment, load_backend
from server.settings import Settings

from .helpers import wait_until

HERE = rt.Environment(tensorrt_version="10.13.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
GPU_MACHINE = Environment(gpu=True, tensorrt=True, ort_cuda=False)


def _engine(folder: Path, *, gpu: str, capability: str, version: str) -> Path:
    plan = folder / "model.plan"
    plan.write_bytes(b"a serialized engine would be here")
    info = Sidecar(
        tensorrt_version=version,
        gpu_name=gpu,
        compute_capability=capability,
        profile=Profile(min_batch=1, opt_batch=8, max_batch=16, min_side=26, opt_side=256, max_side=512),
        precision="fp16",
        onnx_sha256="0" * 64,
        build_time_s=1.0,
        metadata=ModelMetadata(name="elsewhere"),
    )
    write_sidecar(plan, info)
    return plan


@pytest.fixture(autouse=True)
def h100_with_tensorrt_10_13(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rt, "environment", lambda device=0: HERE)


@pytest.mark.parametrize(
    ("gpu", "capability", "version", "phrases"),
    [
        ("NVIDIA A100-SXM4-80GB", "8.0", "10.13.0", ["compute capability 8.0", "A100", "9.0"]),
        ("NVIDIA H100 80GB HBM3", "9.0", "10.3.0", ["TensorRT 10.3.0", "TensorRT 10.13.0"]),
        ("NVIDIA L4", "8.9", "11.4.0", ["TensorRT 11.4.0", "compute capability 8.9"]),
    ],
)
def test_engine_from_another_gpu_or_tensorrt_is_refused_in_one_line(
    tmp_path: Path, gpu: str, capability: str, version: str, phrases: list[str]
) -> None:
    plan = _engine(tmp_path, gpu=gpu, capability=capability, version=version)
    settings = Settings(model=plan, backend="tensorrt", max_side=512, bucket=64)
    with pytest.raises(BackendError) as info:
        load_backend(settings, GPU_MACHINE)
    message = str(info.value)
    assert "\n" not in message and "model.plan cannot run here" in message, message
    for phrase in phrases:
        assert phrase in message, (phrase, message)


def test_engine_without_sidecar_is_refused_in_one_line(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    with pytest.raises(BackendError) as info:
        load_backend(Settings(model=plan, backend="tensorrt"), GPU_MACHINE)
    assert "sidecar" in str(info.value) and "\n" not in str(info.value)


def test_mismatched_engine_falls_back_to_onnx_runtime_where_configured(
    tmp_path: Path, tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """``backend=auto`` with the engine's ``.onnx`` beside it: ONNX Runtime serves; the reason is logged as
    an error and carried as the backend's fallback."""
    plan = _engine(tmp_path, gpu="NVIDIA A100-SXM4-80GB", capability="8.0", version="10.13.0")
    shutil.copy(tiny_models["good"], plan.with_suffix(".onnx"))
    with caplog.at_level(logging.ERROR):
        backend = load_backend(Settings(model=plan, backend="auto", max_side=512, bucket=64), GPU_MACHINE)
    assert backend.name == "onnxruntime" and backend.provider == "CPUExecutionProvider"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("falling back to ONNX Runtime on model.onnx" in e and "A100" in e for e in errors), errors
    assert [reason.kind for reason in backend.fallback] == ["engine_unusable"]


def test_a_failed_engine_build_serves_onnx_and_says_so(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """Issue #17 item 5, the server's half: ensure_engine left no engine, its failure record and the ONNX
    link; the server starts on ONNX Runtime and ``/v1/model`` and ``fcn_backend_info`` report why."""
    plan = tmp_path / "model.plan"
    plan.with_suffix(".onnx").symlink_to(tiny_models["good"])
    write_build_failure(plan, "build_engine: the ONNX parser rejected /models/model.onnx", 1)
    settings = Settings(model=plan, backend="auto", max_side=128, bucket=64, warmup=False)
    app = create_app(settings, backend_loader=lambda s: load_backend(s, GPU_MACHINE))
    with TestClient(app) as client:
        assert wait_until(lambda: client.get("/health/ready").status_code == 200, 60)
        info = client.get("/v1/model").json()
        metrics = client.get("/metrics").text
    assert (info["backend"], info["provider"]) == ("onnxruntime", "CPUExecutionProvider")
    (reason,) = info["fallback"]
    assert reason["kind"] == "engine_build_failed" and "ONNX parser rejected" in reason["detail"]
    labels = (
        'backend="onnxruntime",fallback="engine_build_failed",model="model",'
        'provider="CPUExecutionProvider",version="1"'
    )
    assert f"fcn_backend_info{{{labels}}} 1.0" in metrics, metrics
