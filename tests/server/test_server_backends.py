"""Backend selection (auto / explicit, engine vs ONNX, GPU or not) and the TensorRT refusals on CPU."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import onnxruntime
import pytest

from common.geometry import NetworkGeometry, ServingGeometry
from common.metadata import ModelMetadata
from engine.cache import write_build_failure
from engine.spec import Sidecar, read_sidecar, write_sidecar
from server.backends.base import BackendError, Fallback
from server.backends.select import Choice, Environment, choose, load_backend
from server.settings import DEFAULT_MODEL, Settings
from tests.trtfake import H100, VERSION, install

CPU = Environment(gpu=False, tensorrt=False, ort_cuda=False)
CPU_WITH_ORT_GPU = Environment(gpu=False, tensorrt=False, ort_cuda=True)  # onnxruntime-gpu on a CPU box
GPU_ORT = Environment(gpu=True, tensorrt=False, ort_cuda=True)
GPU_TRT = Environment(gpu=True, tensorrt=True, ort_cuda=True)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    onnx, plan, lone_plan = tmp_path / "m.onnx", tmp_path / "m.plan", tmp_path / "lone.plan"
    for path in (onnx, plan, lone_plan):
        path.write_bytes(b"x")
    return {"onnx": onnx, "plan": plan, "lone_plan": lone_plan, "bare_onnx": tmp_path / "other.onnx"}


@pytest.mark.parametrize(
    ("model", "backend", "env", "expected"),
    [
        ("onnx", "auto", CPU, Choice("onnxruntime", Path("m.onnx"), use_cuda=False)),
        ("onnx", "auto", CPU_WITH_ORT_GPU, Choice("onnxruntime", Path("m.onnx"), use_cuda=False)),
        ("onnx", "auto", GPU_ORT, Choice("onnxruntime", Path("m.onnx"), use_cuda=True)),
        ("onnx", "auto", GPU_TRT, Choice("tensorrt", Path("m.plan"))),  # compatible engine beside the ONNX
        ("bare_onnx", "auto", GPU_TRT, Choice("onnxruntime", Path("other.onnx"), use_cuda=True)),
        ("plan", "auto", CPU, Choice("onnxruntime", Path("m.onnx"), use_cuda=False)),  # engine needs a GPU
        ("plan", "auto", GPU_TRT, Choice("tensorrt", Path("m.plan"))),
        ("onnx", "onnxruntime", GPU_TRT, Choice("onnxruntime", Path("m.onnx"), use_cuda=True)),
        ("plan", "tensorrt", GPU_TRT, Choice("tensorrt", Path("m.plan"))),
    ],
)
def test_choose(files: dict[str, Path], model: str, backend: str, env: Environment, expected: Choice) -> None:
    choice = choose(Settings(model=files[model], backend=backend), env)
    assert (choice.backend, choice.path.name, choice.use_cuda) == (
        expected.backend,
        expected.path.name,
        expected.use_cuda,
    )


@pytest.mark.parametrize(
    ("model", "backend", "env", "phrase"),
    [
        ("plan", "tensorrt", CPU, "needs an NVIDIA GPU"),
        ("onnx", "tensorrt", GPU_TRT, "needs a TensorRT engine"),
        ("plan", "onnxruntime", CPU, "needs an .onnx model"),
        ("lone_plan", "auto", CPU, "needs an NVIDIA GPU"),
    ],
)
def test_choose_refuses_with_reason(
    files: dict[str, Path], model: str, backend: str, env: Environment, phrase: str
) -> None:
    with pytest.raises(BackendError, match=phrase):
        choose(Settings(model=files[model], backend=backend), env)


DEFAULT_PROFILE = ServingGeometry(NetworkGeometry()).engine_profile()


def _engine_with_sidecar(directory: Path, **profile: int) -> Path:
    plan = directory / "engine.plan"
    plan.write_bytes(b"not really a plan")
    info = Sidecar(
        tensorrt_version="10.13.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        profile=replace(DEFAULT_PROFILE, **profile),
        precision="fp16",
        onnx_sha256="0" * 64,
        build_time_s=1.0,
        metadata=ModelMetadata(),
    )
    write_sidecar(plan, info)
    return plan


def test_tensorrt_engine_is_refused_on_this_cpu_machine(tmp_path: Path) -> None:
    """The TensorRT backend refuses an engine here with one clear line (no TensorRT / GPU), never a crash."""
    from server.backends.tensorrt import TensorRTBackend

    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    plan = _engine_with_sidecar(tmp_path)
    with pytest.raises(BackendError) as refused:
        TensorRTBackend(plan, max_batch_size=8, max_side=512, granularity=32)
    message = str(refused.value)
    assert message.startswith("engine engine.plan cannot run here:") and "\n" not in message
    assert "TensorRT" in message or "GPU" in message


def test_tensorrt_profile_must_cover_the_served_shapes(tmp_path: Path) -> None:
    from server.backends.tensorrt import TensorRTBackend

    plan = _engine_with_sidecar(tmp_path, max_batch=4, opt_batch=2, max_side=384, opt_side=256)
    with pytest.raises(BackendError, match=r"does not cover batch 1\.\.8 and the bucket sides 26\.\.512"):
        TensorRTBackend(plan, max_batch_size=8, max_side=512, granularity=32)
    plan = _engine_with_sidecar(tmp_path, min_side=32)  # the old default profile: misses the 26-pixel bucket
    with pytest.raises(BackendError, match=r"sides \(32, 506, 512\)\) does not cover"):
        TensorRTBackend(plan, max_batch_size=8, max_side=512, granularity=32)


def test_tensorrt_without_sidecar_is_refused(tmp_path: Path) -> None:
    from server.backends.tensorrt import TensorRTBackend

    plan = tmp_path / "bare.plan"
    plan.write_bytes(b"x")
    with pytest.raises(BackendError, match="sidecar"):
        TensorRTBackend(plan, max_batch_size=8, max_side=512, granularity=32)


def test_load_backend_reports_missing_and_invalid_models(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="not found"):
        load_backend(Settings(model=tmp_path / "absent.onnx"), CPU)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(BackendError, match="cannot load ONNX model"):
        load_backend(Settings(model=junk), CPU)


def test_probe_sees_no_gpu_here() -> None:
    env = Environment.probe()
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    assert env.gpu is False


def test_auto_says_why_it_serves_onnx_for_an_engine(files: dict[str, Path]) -> None:
    choice = choose(Settings(model=files["plan"], backend="auto"), CPU)
    assert choice.fallback == (Fallback("no_tensorrt", "engine m.plan needs an NVIDIA GPU"),)
    assert choose(Settings(model=files["onnx"], backend="auto"), CPU).fallback == ()  # nothing else was meant


def _compatible_engine(folder: Path, plan_bytes: bytes) -> Path:
    """An engine whose sidecar matches the fake H100 and TensorRT, with the demo ONNX beside it."""
    plan = _engine_with_sidecar(folder)
    plan.write_bytes(plan_bytes)
    info = replace(read_sidecar(plan), tensorrt_version=VERSION, gpu_name=H100[0], compute_capability=H100[1])
    write_sidecar(plan, info)
    shutil.copy(DEFAULT_MODEL, plan.with_suffix(".onnx"))
    return plan


def test_a_runner_error_falls_back_to_onnx_runtime(monkeypatch, tmp_path: Path, caplog) -> None:
    """Item 6: ``TensorRTRunner`` raises RuntimeError for a plan TensorRT cannot read (and on CUDA errors);
    ``auto`` falls back to the ONNX beside the engine and says why, loudly."""
    install(monkeypatch)
    plan = _compatible_engine(tmp_path, b"not a plan TensorRT can read")
    with caplog.at_level(logging.ERROR):
        backend = load_backend(Settings(model=plan, backend="auto"), GPU_TRT)
    assert (backend.name, backend.provider) == ("onnxruntime", "CPUExecutionProvider")
    (reason, cuda) = backend.fallback
    assert reason.kind == "engine_unusable" and "cannot deserialize" in reason.detail
    assert cuda.kind == "cuda_unavailable"  # this onnxruntime has no CUDA: also said, not hidden
    assert any("falling back to ONNX Runtime on engine.onnx" in r.getMessage() for r in caplog.records)
    with pytest.raises(BackendError, match=r"cannot be loaded: TensorRT .* cannot deserialize"):
        load_backend(Settings(model=plan, backend="tensorrt"), GPU_TRT)


def test_any_runtime_error_of_the_engine_falls_back(monkeypatch, tmp_path: Path) -> None:
    import server.backends.tensorrt as trt_backend

    def cuda_error(*args, **kwargs):
        raise RuntimeError("CUDA runtime error cudaErrorMemoryAllocation")

    monkeypatch.setattr(trt_backend, "TensorRTBackend", cuda_error)
    plan = _compatible_engine(tmp_path, b"x")
    backend = load_backend(Settings(model=plan, backend="auto"), GPU_TRT)
    assert backend.name == "onnxruntime" and backend.fallback[0].kind == "engine_unusable"
    assert "cudaErrorMemoryAllocation" in backend.fallback[0].detail


def test_a_recorded_build_failure_is_the_reason_given(monkeypatch, tmp_path: Path) -> None:
    """Item 5: after ensure_engine's failed build there is no plan, only its record and the ONNX."""
    install(monkeypatch)
    plan = _compatible_engine(tmp_path, b"x")
    plan.unlink()
    write_build_failure(plan, "build_engine: the ONNX parser rejected model.onnx", 1)
    backend = load_backend(Settings(model=plan, backend="auto"), GPU_TRT)
    reason = backend.fallback[0]
    assert reason.kind == "engine_build_failed" and "ONNX parser rejected" in reason.detail
    backend = load_backend(Settings(model=plan, backend="auto"), CPU)  # no GPU either: still the build
    assert backend.fallback[0].kind == "engine_build_failed"


def test_ort_cuda_preloads_the_libraries_and_reports_the_real_provider(monkeypatch, caplog) -> None:
    """Item 4: ``preload_dlls`` runs before the CUDA session; the provider comes from the session, and a
    CUDA request that ends on the CPU is an error and a ``cuda_unavailable`` fallback."""
    from server.backends.ort import OnnxRuntimeBackend

    events: list[str] = []
    real_session = onnxruntime.InferenceSession

    def session(*args, **kwargs):
        events.append(f"session {kwargs['providers']}")
        return real_session(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda *a, **k: events.append("preload"))
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    with caplog.at_level(logging.ERROR):
        backend = OnnxRuntimeBackend(DEFAULT_MODEL, use_cuda=True)
    assert events == ["preload", "session ['CUDAExecutionProvider', 'CPUExecutionProvider']"]
    assert backend.provider == "CPUExecutionProvider"  # what the session runs, not what was asked
    (reason,) = backend.fallback
    assert (
        reason.kind == "cuda_unavailable" and "runs fcn8s-demo.onnx on CPUExecutionProvider" in reason.detail
    )
    assert any(r.levelno == logging.ERROR and "CUDA was expected" in r.getMessage() for r in caplog.records)
    events.clear()
    cpu = OnnxRuntimeBackend(DEFAULT_MODEL, use_cuda=False)
    assert events == ["session ['CPUExecutionProvider']"] and cpu.fallback == ()


def test_a_failing_preload_is_part_of_the_reason(monkeypatch) -> None:
    from server.backends.ort import OnnxRuntimeBackend

    def broken(*args, **kwargs):
        raise OSError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(onnxruntime, "preload_dlls", broken)
    (reason,) = OnnxRuntimeBackend(DEFAULT_MODEL, use_cuda=True).fallback
    assert "preloading the CUDA libraries failed: OSError: libcudnn.so.9" in reason.detail
