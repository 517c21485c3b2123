"""Everything around TensorRT that runs without it: sidecar, compatibility, precision, CLI, build flow."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.geometry import NetworkGeometry, Profile, ServingGeometry
from common.metadata import ModelMetadata, Normalization
from engine import runtime as rt
from engine.runtime import compatibility_problems
from engine.spec import (
    EngineMismatch,
    Sidecar,
    SidecarError,
    check_compatible,
    mismatches,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from export import build_engine, trt
from export.precision import PrecisionError, check_fp16, layer_precisions
from tests.trtfake import FakeDevice, fake_plan, get_cuda_native_handle, install

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = ServingGeometry(NetworkGeometry()).engine_profile()
STUBS = (
    Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
)


def sidecar(**changes) -> Sidecar:
    fields = dict(
        tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
        profile=DEFAULT_PROFILE, precision="fp16", onnx_sha256="ab" * 32, build_time_s=41.5,
        metadata=ModelMetadata(width=0.25, normalization=Normalization.caffe()), source_sha256="cd" * 32,
    )  # fmt: skip
    fields.update(changes)
    return Sidecar(**fields)


def test_sidecar_round_trip(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    path = write_sidecar(plan, sidecar())
    assert path == sidecar_path(plan) == tmp_path / "model.plan.json"
    data = json.loads(path.read_text())
    for key in ("tensorrt_version", "gpu_name", "compute_capability", "profile", "precision", "onnx_sha256"):
        assert key in data
    assert data["profile"] == dict(
        min_batch=1, opt_batch=4, max_batch=8, min_side=26, opt_side=506, max_side=512
    )
    assert read_sidecar(plan) == sidecar()


def test_missing_or_broken_sidecar_is_a_clear_error(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    with pytest.raises(SidecarError, match=r"build_engine\.py"):
        read_sidecar(plan)
    sidecar_path(plan).write_text('{"tensorrt_version": "10.13"}')
    with pytest.raises(SidecarError, match="not a valid engine sidecar"):
        read_sidecar(plan)


def test_compatibility_checks() -> None:
    info = sidecar()
    here = dict(gpu_name=info.gpu_name, compute_capability="9.0", tensorrt_version="10.13.0.35")
    assert mismatches(info, **here) == []
    check_compatible(info, **here)
    other_trt = {**here, "tensorrt_version": "11.4.0.106"}
    assert mismatches(info, **other_trt) == ["built with TensorRT 10.13.0.35, this is TensorRT 11.4.0.106"]
    other_gpu = {**here, "gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    (problem,) = mismatches(info, **other_gpu)
    assert "compute capability 9.0" in problem and "8.0 (NVIDIA A100-SXM4-80GB)" in problem
    same_arch = {**here, "gpu_name": "NVIDIA H200"}
    assert mismatches(info, **same_arch) == ["built on NVIDIA H100 80GB HBM3, this GPU is NVIDIA H200"]
    with pytest.raises(EngineMismatch, match=r"rebuild it with `python export/build_engine\.py"):
        check_compatible(info, **other_trt)


def test_compatibility_problems_without_tensorrt_names_what_is_missing(monkeypatch) -> None:
    monkeypatch.setattr(rt, "trt", None)
    (problem,) = compatibility_problems(sidecar())
    assert "TensorRT is not installed" in problem


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(min_batch=0), "batch"), (dict(opt_batch=32), "batch"), (dict(min_side=600), "side")],
)
def test_profile_validation(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(DEFAULT_PROFILE, **kwargs)


def test_profile_shapes_and_cover() -> None:
    profile = Profile(1, 4, 8, 64, 256, 512)
    assert profile.shapes() == ((1, 64, 64, 3), (4, 256, 256, 3), (8, 512, 512, 3))
    assert profile.covers(8, 64, 512) and not profile.covers(9, 100, 100) and not profile.covers(1, 63, 100)


def test_profile_flags() -> None:
    network = NetworkGeometry()
    args = build_engine.parse_args(["--onnx", "m.onnx", "--out", "m.plan"])
    assert build_engine.choose_profile(args, network) == DEFAULT_PROFILE
    assert args.workspace_gb == 4.0 and args.opt_level == 3
    args = build_engine.parse_args(
        [
            "--onnx",
            "m.onnx",
            "--out",
            "m.plan",
            "--profile-max-batch",
            "32",
            "--profile-opt-side",
            "384",
            "--profile-min-side",
            "20",
        ]
    )
    assert build_engine.choose_profile(args, network) == Profile(1, 4, 32, 20, 384, 512)
    args = build_engine.parse_args(
        ["--onnx", "m.onnx", "--out", "m.plan", "--max-side", "256", "--bucket", "64"]
    )
    assert build_engine.choose_profile(args, network) == Profile(1, 4, 8, 58, 256, 256)
    for bad in (["--opt-batch", "20"], ["--max-side-override", "16"]):
        with pytest.raises((SystemExit, ValueError)):
            build_engine.choose_profile(
                build_engine.parse_args(["--onnx", "m", "--out", "m.plan", *bad]), network
            )
    for bad in (["--opt-level", "6"], ["--workspace-gb", "0"]):
        with pytest.raises(SystemExit):
            build_engine.parse_args(["--onnx", "m.onnx", "--out", "m.plan", *bad])


@pytest.mark.parametrize("how", [["export/build_engine.py"], ["-m", "export.build_engine"]])
def test_cli_without_tensorrt_prints_one_line(how: list[str], exported, tmp_path: Path) -> None:
    if rt.tensorrt_available():
        pytest.skip("TensorRT is installed here")
    command = [sys.executable, *how, "--onnx", str(exported.onnx), "--out", str(tmp_path / "m.plan")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("build_engine: cannot build a TensorRT engine: ")
    assert "TensorRT is not installed" in lines[0] or "CUDA" in lines[0]
    assert not (tmp_path / "m.plan").exists()


def test_environment_names_each_missing_piece(monkeypatch) -> None:
    monkeypatch.setattr(rt, "trt", None)
    with pytest.raises(rt.TensorRTUnavailable, match="TensorRT is not installed"):
        rt.environment()
    with pytest.raises(rt.TensorRTUnavailable, match="TensorRT is not installed"):
        rt.TensorRTRunner(Path("x.plan"))
    monkeypatch.setattr(rt, "trt", SimpleNamespace(Builder=object, __version__="10.13.0.35"))
    monkeypatch.setattr(rt, "cudart", None)
    with pytest.raises(rt.TensorRTUnavailable, match="cuda-python"):
        rt.environment()
    no_gpu = FakeDevice()
    no_gpu.cudaGetDeviceCount = lambda: (no_gpu.cudaError_t.cudaErrorNoDevice, 0)  # type: ignore[method-assign]
    monkeypatch.setattr(rt, "cudart", no_gpu)
    with pytest.raises(rt.TensorRTUnavailable, match="no CUDA GPU found"):
        rt.environment()
    monkeypatch.setattr(rt, "cudart", FakeDevice(("NVIDIA H100 80GB HBM3", "9.0")))
    assert rt.environment() == rt.Environment("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")


def layer(name: str, kind: str, datatype: str, *, split: bool = False) -> dict:
    tensor = {"Name": f"{name}_out", "Dimensions": [1, 21, 64, 64]}
    tensor.update(
        {"DataType": datatype, "Format": "Row major linear"} if split else {"Format/Datatype": datatype}
    )
    return {"Name": name, "LayerType": kind, "Inputs": [], "Outputs": [tensor]}


def engine_json(*layers: dict) -> str:
    return json.dumps({"Layers": list(layers), "Bindings": ["image", "labels"]})


def test_layer_precisions_tensorrt10_format() -> None:
    info = engine_json(
        layer("node_sub + node_div", "PointWiseV2", "Row major linear FP32 format"),
        layer(
            "node_conv1 + node_relu", "CaskConvolution", "Channel major FP16 format where channel % 8 == 0"
        ),
        layer("node_upscore8", "CaskDeconvolutionV2", "Half"),
        layer("node_argmax", "Reduce", "Int32"),
    )
    report = layer_precisions(info)
    assert (report.layers, report.fp16_layers, report.convolutions, report.fp16_convolutions) == (4, 2, 2, 2)
    check_fp16(report)


def test_layer_precisions_tensorrt11_split_fields_and_silent_fp32() -> None:
    info = engine_json(
        layer("node_conv1", "CaskConvolution", "Float", split=True),
        layer("node_conv2", "CaskConvolution", "Float", split=True),
    )
    report = layer_precisions(info)
    assert report.fp16_convolutions == 0 and report.fp32_convolution_names == ("node_conv1", "node_conv2")
    with pytest.raises(PrecisionError, match="2 of 2 convolution layers run in FP32"):
        check_fp16(report)
    mixed = layer_precisions(
        engine_json(
            layer("a", "CaskConvolution", "Half", split=True),
            layer("b", "CaskConvolution", "Float", split=True),
        )
    )
    with pytest.raises(PrecisionError):
        check_fp16(mixed)
    check_fp16(mixed, allowed_fp32_convolutions=1)


def test_layer_precisions_needs_detailed_verbosity() -> None:
    with pytest.raises(PrecisionError, match="DETAILED"):
        layer_precisions(json.dumps({"Layers": ["node_conv1 + node_relu", "node_argmax"]}))
    with pytest.raises(PrecisionError, match="JSON"):
        layer_precisions("not json")


STUB_FIXES = (
    (re.compile(r"\bin: list\["), "in_: list["),  # `in` is a keyword
    (
        re.compile(r"power: Weights = None, channel_axis: int\)"),
        "power: Weights = None, channel_axis: int = ...)",
    ),
)
MYPY_CONFIG = """[mypy]
python_version = 3.11
ignore_missing_imports = true
[mypy-tensorrt.*,tensorrt_bindings.*,tensorrt]
ignore_errors = true
"""


def test_trt_module_type_checks_against_the_tensorrt_stubs(tmp_path: Path) -> None:
    """mypy on export/trt.py with tensorrt-stubs (TensorRT 10.13 API) really in use.

    As installed, mypy ignores those stubs (no py.typed marker: ``tensorrt`` is Any) and, given them
    explicitly, stops at syntax errors in them; so this copies them, fixes the two syntax problems
    and points MYPYPATH at the copy.
    """
    if not (STUBS / "tensorrt_bindings" / "tensorrt.pyi").is_file():
        pytest.skip("tensorrt-stubs is not installed")
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(STUBS / package, tmp_path / "stubs" / package, ignore=shutil.ignore_patterns("*.pyc"))
    stub = tmp_path / "stubs" / "tensorrt_bindings" / "tensorrt.pyi"
    text = stub.read_text()
    for pattern, replacement in STUB_FIXES:
        text = pattern.sub(replacement, text)
    stub.write_text(text)
    (tmp_path / "mypy.ini").write_text(MYPY_CONFIG)
    command = [sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"), "--no-incremental",
               "--cache-dir", str(tmp_path / "cache"), "engine/runtime.py", "export/trt.py"]  # fmt: skip
    probe = "import tensorrt as trt\nreveal_type(trt.Builder)\n"
    (tmp_path / "probe.py").write_text(probe)
    env = {**os.environ, "MYPYPATH": str(tmp_path / "stubs")}
    probe_command = [*command[:-1], str(tmp_path / "probe.py")]
    revealed = subprocess.run(probe_command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "def (logger: tensorrt_bindings.tensorrt.ILogger)" in revealed.stdout, revealed.stdout[-2000:]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.gpu
def test_engine_matches_onnx_runtime(exported, tmp_path: Path) -> None:
    try:
        rt.environment()
    except rt.TensorRTUnavailable as error:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {error}")
    import onnx

    from export.fp16 import convert_to_fp16

    fp16 = tmp_path / "fp16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(exported.onnx))).model, str(fp16))
    plan = tmp_path / "m.plan"
    code = build_engine.main(
        ["--onnx", str(fp16), "--out", str(plan), "--reference", str(exported.onnx), "--verify",
         "--profile-opt-batch", "2", "--max-batch-size", "4", "--max-side", "256", "--count", "4"]
    )  # fmt: skip
    assert code == 0 and read_sidecar(plan).precision == "fp16"
    runner = rt.TensorRTRunner(plan)
    labels = runner.run(np.zeros((3, 45, 77, 3), dtype=np.uint8))
    runner.close()
    assert labels.shape == (3, 45, 77) and labels.dtype == np.uint8


class OnnxRuntimeAsEngine:
    """Stands in for TensorRTRunner: runs the given ONNX file with ONNX Runtime."""

    onnx_path: Path

    def __init__(self, plan: Path) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(self.onnx_path))
        self.closed = False

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["labels"], {"image": images})[0]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine where TensorRT 'builds' and runs engines: environment, build and runner replaced."""
    monkeypatch.setattr(
        rt, "environment", lambda device=0: rt.Environment("10.13.0.35", "NVIDIA H100", "9.0")
    )
    built: dict = {
        "layers": engine_json(layer("conv", "CaskConvolution", "Half"), layer("up", "Deconv", "Half"))
    }

    def fake_build(onnx_path: Path, options: trt.BuildOptions) -> trt.BuiltEngine:
        built["options"] = options
        return trt.BuiltEngine(b"PLAN", built["layers"], 12.5, False)

    monkeypatch.setattr(trt, "build_engine", fake_build)
    monkeypatch.setattr(rt, "TensorRTRunner", OnnxRuntimeAsEngine)
    return built


def test_build_engine_cli_flow(fake_gpu, exported, tmp_path: Path, capsys) -> None:
    import onnx

    from common.digest import file_sha256
    from export.fp16 import convert_to_fp16

    fp16 = tmp_path / "fp16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(exported.onnx))).model, str(fp16))
    OnnxRuntimeAsEngine.onnx_path = fp16
    plan, repo = tmp_path / "out" / "m.plan", tmp_path / "repo"
    code = build_engine.main(
        ["--onnx", str(fp16), "--out", str(plan), "--reference", str(exported.onnx), "--verify",
         "--count", "3", "--profile-opt-side", "96", "--profile-max-batch", "4", "--profile-opt-batch", "2",
         "--triton-repo", str(repo)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert plan.read_bytes() == b"PLAN"
    info = read_sidecar(plan)
    assert (info.tensorrt_version, info.gpu_name, info.compute_capability) == (
        "10.13.0.35",
        "NVIDIA H100",
        "9.0",
    )
    assert info.precision == "fp16" and info.profile == Profile(1, 2, 4, 26, 96, 512)
    assert info.onnx_sha256 == file_sha256(fp16) and info.source_sha256 == file_sha256(exported.checkpoint)
    assert info.fp16_layers == 2 and info.build_time_s == 12.5
    assert fake_gpu["options"].timing_cache == plan.parent / "timing-trt10.13.0.35-nvidia-h100-sm90.cache"
    assert re.search(r"engine vs ONNX Runtime FP32: (99\.\d+|100\.0000)% equal, \d+ near-tie and 0 real", out)
    assert "2/2 layers and 1/1 convolution layers produce FP16" in out
    assert (repo / "fcn8s" / "1" / "model.plan").is_file() and (
        repo / "fcn8s_onnx" / "1" / "model.onnx"
    ).is_file()
    assert "wrote" in out and "done in" in out


def test_build_engine_refuses_a_silent_fp32_engine(fake_gpu, exported, tmp_path: Path, capsys) -> None:
    import onnx

    from export.fp16 import convert_to_fp16

    fake_gpu["layers"] = engine_json(layer("conv", "CaskConvolution", "Float"))
    fp16 = tmp_path / "fp16.onnx"
    onnx.save(convert_to_fp16(onnx.load(str(exported.onnx))).model, str(fp16))
    plan = tmp_path / "m.plan"
    assert build_engine.main(["--onnx", str(fp16), "--out", str(plan)]) == 1
    assert "1 of 1 convolution layers run in FP32" in capsys.readouterr().err
    assert not plan.exists()
    assert build_engine.main(["--onnx", str(fp16), "--out", str(plan), "--verify"]) == 1
    assert "--verify needs --reference" in capsys.readouterr().err


def test_runner_copies_only_the_labels_back(monkeypatch, tmp_path: Path) -> None:
    device = install(monkeypatch).device
    plan = tmp_path / "m.plan"
    plan.write_bytes(fake_plan(Profile(1, 2, 4, 32, 64, 128)))
    runner = rt.TensorRTRunner(plan)
    assert (runner.min_shape, runner.max_shape) == ((1, 32, 32, 3), (4, 128, 128, 3))
    rng = np.random.default_rng(0)
    for shape in [(2, 40, 50, 3), (4, 128, 96, 3), (1, 32, 33, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        device.copies.clear()
        labels = runner.run(images)
        np.testing.assert_array_equal(labels, images[..., 0] % 21)
        n, h, w, _ = shape
        assert device.copies == [("H2D", n * h * w * 3), ("D2H", n * h * w)], "scores must stay on the device"
    with pytest.raises(ValueError, match="outside the engine profile"):
        runner.run(np.zeros((5, 64, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        runner.run(np.zeros((1, 64, 64, 3), dtype=np.float32))
    runner.close()
    assert device.buffers == {} and device.streams == {}
    plan.write_bytes(b"OTHER")
    with pytest.raises(RuntimeError, match="cannot deserialize"):
        rt.TensorRTRunner(plan)


def test_runner_gives_tensorrt_the_native_stream_handle(monkeypatch, tmp_path: Path) -> None:
    """Issue #17 item 9: TensorRT gets ``get_cuda_native_handle(stream)`` (an int), CUDA errors are compared
    with ``cudaError_t.cudaSuccess`` (the fake's errors are a plain Enum: ``int(error)`` raises)."""
    fake = install(monkeypatch)
    plan = tmp_path / "m.plan"
    plan.write_bytes(fake_plan(Profile(1, 1, 2, 32, 32, 64)))
    runner = rt.TensorRTRunner(plan)
    (stream,) = fake.device.streams.values()
    assert not isinstance(stream, int) and get_cuda_native_handle(stream) == stream.handle
    with pytest.raises(TypeError):
        int(fake.device.cudaError_t.cudaSuccess)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="Unknown type"):
        get_cuda_native_handle(stream.handle)  # like cuda-bindings: only CUDA objects have a handle
    assert (
        runner.run(np.full((1, 32, 32, 3), 30, dtype=np.uint8)).tolist() == np.full((1, 32, 32), 9).tolist()
    )
    runner.close()
    with pytest.raises(RuntimeError, match="cudaErrorInvalidValue"):
        rt.DeviceBuffer.free(SimpleNamespace(pointer=12345, size=1))  # type: ignore[arg-type]
