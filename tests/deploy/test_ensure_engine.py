"""docker/ensure_engine.py, the GPU deployment's one-shot engine step: it reuses a matching cached engine,
rebuilds on every mismatch (GPU/TensorRT, ONNX, build flags), builds once when replicas race for a shared
cache, and turns a failed build into an ONNX Runtime fallback instead of an outage. A fake build stands in
for TensorRT. Also the engine cache's files (``engine.cache``) and the GPU image's static facts."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from common.digest import file_sha256
from common.geometry import NetworkGeometry, ServingGeometry
from common.metadata import ModelMetadata
from engine import cache
from engine.spec import Sidecar, sidecar_path, write_sidecar

from .helpers import REPO_ROOT

_spec = importlib.util.spec_from_file_location("ensure_engine", REPO_ROOT / "docker" / "ensure_engine.py")
assert _spec is not None and _spec.loader is not None
ensure_engine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ensure_engine)


def matches(_: Sidecar) -> list[str]:
    return []


class FakeBuild:
    """Stands in for `python export/build_engine.py`: writes a plan and its sidecar for the given ONNX."""

    def __init__(self, exit_code: int = 0, started: threading.Event | None = None, release=None) -> None:
        self.calls: list[list[str]] = []
        self.exit_code = exit_code
        self.started, self.release = started, release

    def __call__(self, cmd: list[str]) -> tuple[int, str]:
        self.calls.append(cmd)
        if self.started is not None:
            self.started.set()
            assert self.release.wait(30), "the test never released the build"
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
        return self.exit_code, "" if self.exit_code == 0 else "build_engine: the ONNX parser rejected it"


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
    assert json.loads(ensure_engine.args_path(plan).read_text()) == ["--precision", "fp16"]
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


def test_a_failed_build_falls_back_instead_of_an_outage(paths, caplog):
    """Issue #17 item 5: exit 0 (compose's service_completed_successfully, the k8s init container), the
    ONNX linked beside the engine, the stale engine gone, the reason recorded and logged loudly."""
    plan, onnx = paths
    ensure_engine.ensure(plan, onnx, [], problems=matches, build=FakeBuild())
    onnx.write_bytes(b"onnx v2")  # a new model whose build fails: the old engine must not be served
    with caplog.at_level("ERROR"):
        assert ensure_engine.ensure(plan, onnx, [], problems=matches, build=FakeBuild(exit_code=3)) == 0
    assert plan.with_suffix(".onnx").resolve() == onnx.resolve()
    assert (
        not plan.exists() and not sidecar_path(plan).exists() and not ensure_engine.args_path(plan).exists()
    )
    assert "the ONNX parser rejected it (exit code 3" in cache.read_build_failure(plan)
    assert any("ENGINE BUILD FAILED (exit code 3)" in r.getMessage() for r in caplog.records)
    assert ensure_engine.miss_reason(plan, onnx, [], matches)
    ensure_engine.ensure(plan, onnx, [], problems=matches, build=FakeBuild())  # fixed: built, record gone
    assert plan.is_file() and cache.read_build_failure(plan) is None


def test_run_build_streams_stderr_and_keeps_its_last_line(capfd):
    script = (
        "import sys; print('progress'); print('one', file=sys.stderr); print('the reason', file=sys.stderr)"
    )
    code, last = ensure_engine.run_build([sys.executable, "-c", script + "; sys.exit(3)"])
    assert (code, last) == (3, "the reason")
    out, err = capfd.readouterr()
    assert "progress" in out and "one\nthe reason" in err


def test_replicas_sharing_the_cache_build_once(paths):
    """Issue #17 item 7: the second replica waits for the lock, checks again and finds the engine."""
    plan, onnx = paths
    started, release = threading.Event(), threading.Event()
    first, second = FakeBuild(started=started, release=release), FakeBuild()
    codes: list[int] = []
    builder = threading.Thread(
        target=lambda: codes.append(ensure_engine.ensure(plan, onnx, [], matches, first))
    )
    builder.start()
    assert started.wait(30)
    waiter = threading.Thread(
        target=lambda: codes.append(ensure_engine.ensure(plan, onnx, [], matches, second))
    )
    waiter.start()
    deadline = time.monotonic() + 10
    while not _waiting_on_lock(plan) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waiter.is_alive(), "the second replica must wait for the first one's build"
    release.set()
    builder.join(30)
    waiter.join(30)
    assert codes == [0, 0] and len(first.calls) == 1 and second.calls == []


def _waiting_on_lock(plan: Path) -> bool:
    """Whether someone holds the cache lock (a non-blocking attempt fails)."""
    try:
        with cache.cache_lock(plan, timeout_s=0):
            return False
    except cache.CacheLocked:
        return True


def test_a_hung_build_elsewhere_does_not_block_forever(paths, caplog):
    plan, onnx = paths
    build = FakeBuild()
    with cache.cache_lock(plan), caplog.at_level("ERROR"):
        assert ensure_engine.ensure(plan, onnx, [], matches, build, lock_timeout_s=0.2) == 0
    assert build.calls == [] and plan.with_suffix(".onnx").is_symlink()
    assert any("stayed locked" in r.getMessage() for r in caplog.records)


def test_a_reader_waits_for_the_builder(tmp_path):
    plan = tmp_path / "m.plan"
    with cache.cache_lock(plan, shared=True) as held:
        assert held is False  # nothing ever built here: nothing to wait for
    reader = cache.cache_lock(plan, shared=True, timeout_s=0.2)
    with cache.cache_lock(plan), pytest.raises(cache.CacheLocked), reader:
        pass
    with cache.cache_lock(plan, shared=True) as first, cache.cache_lock(plan, shared=True) as second:
        assert first and second  # readers share


def test_files_are_replaced_atomically(tmp_path, monkeypatch):
    """Issue #17 item 7: a writer that dies before its rename leaves the old file whole and no litter."""
    target = tmp_path / "engines" / "m.plan"
    cache.write_atomic(target, b"old plan")
    assert target.stat().st_mode & 0o777 == 0o644

    def crash(*args):
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        cache.write_atomic(target, b"new plan, half written")
    assert target.read_bytes() == b"old plan" and os.listdir(target.parent) == ["m.plan"]


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


GPU_DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile.gpu"


def test_the_gpu_image_does_not_expose_every_gpu():
    """Issue #17 item 10: no NVIDIA_VISIBLE_DEVICES=all baked in (a container without a GPU request would
    see every GPU where nvidia is the default runtime)."""
    instructions = [
        line for line in GPU_DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    assert not any("NVIDIA_VISIBLE_DEVICES" in line for line in instructions)


IMPORTS = """
import importlib.util, json, pathlib, sys
spec = importlib.util.spec_from_file_location("ensure_engine", "docker/ensure_engine.py")
spec.loader.exec_module(importlib.util.module_from_spec(spec))
import server.__main__, server.app, server.backends.ort, server.backends.tensorrt
from server.backends.select import Environment
Environment.probe()  # imports the engine package lazily, as the server does at start-up
root = pathlib.Path.cwd().resolve()
files = [pathlib.Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", 0)]
print(json.dumps(sorted({f.relative_to(root).parts[0] for f in files if f.is_relative_to(root)} - {".venv"})))
"""


def test_the_images_copy_every_package_the_server_and_engine_step_import():
    """The server (both images) and the engine step (GPU image) import only packages the images copy (and
    the build context admits)."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", IMPORTS], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    packages = set(json.loads(result.stdout)) - {"docker"}
    assert {"common", "engine", "server"} <= packages
    build_script = ensure_engine.BUILD_SCRIPT.relative_to(REPO_ROOT).parts[0]  # run, not imported
    for dockerfile, needed in [("Dockerfile.cpu", packages), ("Dockerfile.gpu", packages | {build_script})]:
        text = (REPO_ROOT / "docker" / dockerfile).read_text()
        copied = set(re.findall(r"^COPY (\w+)/ \1/$", text, re.M))
        assert needed <= copied, f"{dockerfile} does not copy {sorted(needed - copied)}"
    admitted = set(re.findall(r"^!(\w+)/$", (REPO_ROOT / ".dockerignore").read_text(), re.M))
    assert packages | {build_script} <= admitted, f".dockerignore keeps out {sorted(packages - admitted)}"
