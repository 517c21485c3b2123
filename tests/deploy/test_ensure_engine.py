"""docker/ensure_engine.py, the GPU deployment's one-shot engine step: it reuses a matching cached engine
and rebuilds on every mismatch (GPU/TensorRT, ONNX, build flags). A fake build stands in for TensorRT."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from common.digest import file_sha256
from common.geometry import NetworkGeometry, ServingGeometry
from common.metadata import ModelMetadata
from engine.spec import Sidecar, write_sidecar

from .helpers import REPO_ROOT

_spec = importlib.util.spec_from_file_location("ensure_engine", REPO_ROOT / "docker" / "ensure_engine.py")
assert _spec is not None and _spec.loader is not None
ensure_engine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ensure_engine)


def matches(_: Sidecar) -> list[str]:
    return []


class FakeBuild:
    """Stands in for `python export/build_engine.py`: writes a plan and its sidecar for the given ONNX."""

    def __init__(self, exit_code: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.exit_code = exit_code

    def __call__(self, cmd: list[str]) -> int:
        self.calls.append(cmd)
        if self.exit_code == 0:
            onnx, plan = Path(cmd[cmd.index("--onnx") + 1]), Path(cmd[cmd.index("--out") + 1])
            plan.write_bytes(b"plan")
            sidecar = Sidecar(
                tensorrt_version="10.13.3.9",
                gpu_name="NVIDIA H100 80GB HBM3",
                compute_capability="9.0",
                profile=ServingGeometry(NetworkGeometry()).engine_profile(),
                precision="fp32",
                onnx_sha256=file_sha256(onnx),
                build_time_s=1.0,
                metadata=ModelMetadata(width=1 / 32),
            )
            write_sidecar(plan, sidecar)
        return self.exit_code


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    onnx = tmp_path / "models" / "demo" / "fcn8s-demo.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"onnx v1")
    return tmp_path / "engines" / "fcn8s-demo.plan", onnx


def test_first_start_builds_then_second_start_reuses(paths):
    plan, onnx = paths
    build = FakeBuild()
    assert ensure_engine.ensure(plan, onnx, ["--precision", "fp16"], problems=matches, build=build) == 0
    assert build.calls == [
        [
            sys.executable,
            str(ensure_engine.BUILD_SCRIPT),
            "--onnx",
            str(onnx),
            "--out",
            str(plan),
            "--precision",
            "fp16",
        ]
    ]
    assert (
        plan.with_suffix(".onnx").resolve() == onnx.resolve()
    )  # the server's ORT fallback beside the engine
    assert ensure_engine.ensure(plan, onnx, ["--precision", "fp16"], problems=matches, build=build) == 0
    assert len(build.calls) == 1


@pytest.mark.parametrize("change", ["gpu", "onnx", "flags", "sidecar"])
def test_any_mismatch_rebuilds(paths, change):
    plan, onnx = paths
    build = FakeBuild()
    ensure_engine.ensure(plan, onnx, [], problems=matches, build=build)
    problems, flags = matches, []
    if change == "gpu":
        problems = lambda _: ["built with TensorRT 10.13.3.9, this is TensorRT 11.4.0"]  # noqa: E731
    elif change == "onnx":
        onnx.write_bytes(b"onnx v2")
    elif change == "flags":
        flags = ["--max-batch", "4"]
    else:
        (plan.parent / (plan.name + ".json")).unlink()
    reason = ensure_engine.miss_reason(plan, onnx, flags, problems)
    assert reason
    assert ensure_engine.ensure(plan, onnx, flags, problems=problems, build=build) == 0
    assert len(build.calls) == 2


def test_without_tensorrt_the_real_check_refuses_the_cache(paths):
    """On a machine without TensorRT/GPU (like CI), the sidecar check itself reports a miss, never a hit."""
    plan, onnx = paths
    ensure_engine.ensure(plan, onnx, [], problems=matches, build=FakeBuild())
    assert "TensorRT" in (ensure_engine.miss_reason(plan, onnx, []) or "")


def test_failed_build_is_not_cached(paths):
    plan, onnx = paths
    assert ensure_engine.ensure(plan, onnx, [], problems=matches, build=FakeBuild(exit_code=3)) == 3
    assert not ensure_engine.args_path(plan).exists()
    assert ensure_engine.miss_reason(plan, onnx, [], matches)


def test_bad_paths_exit_2(paths, monkeypatch):
    plan, onnx = paths
    assert ensure_engine.ensure(plan.with_suffix(".onnx"), onnx, [], problems=matches, build=FakeBuild()) == 2
    assert (
        ensure_engine.ensure(plan, onnx.with_name("missing.onnx"), [], problems=matches, build=FakeBuild())
        == 2
    )
    monkeypatch.delenv("FCN_ENGINE_ONNX", raising=False)
    monkeypatch.setenv("FCN_MODEL", str(plan))
    assert ensure_engine.main() == 2
