"""One-shot engine step of the GPU deployment: build the TensorRT engine only when the cache lacks a good one.

An engine runs only on the GPU model and TensorRT version it was built for, so it is built on the target
machine, into the engine-cache volume, and reused while its sidecar still matches:

    engine = $FCN_MODEL (default /engines/fcn8s-demo.plan), built from $FCN_ENGINE_ONNX
    cache hit  <=> engine + sidecar exist, sidecar matches this GPU + TensorRT, and was built from this ONNX
                   with the same $FCN_ENGINE_BUILD_ARGS (recorded in <engine>.args.json)
    otherwise  -> python export/build_engine.py --onnx ONNX --out ENGINE $FCN_ENGINE_BUILD_ARGS

Replicas may share the cache: the check and the build run under an exclusive lock on ``<engine>.lock``
(``engine.cache``), and the check is repeated once the lock is held, so a replica that waited finds the
engine another one built. Either way the ONNX is linked beside the engine (``<engine stem>.onnx``).

A failed build is not an outage: the stale engine files are removed (an engine built from another ONNX
must not be served), ``<engine>.failed.json`` records why, the failure is logged loudly, and the step
still exits 0, so the server starts (compose's ``service_completed_successfully``, a Kubernetes init
container) and its ``auto`` backend serves the ONNX with ONNX Runtime (CUDA, else CPU), reporting the
fallback in ``/v1/model`` and ``fcn_backend_info``. Exit 2 only when there is nothing to serve (bad paths).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from common.digest import file_sha256
from engine.cache import CacheLocked, cache_lock, clear_build_failure, write_atomic, write_build_failure
from engine.runtime import compatibility_problems
from engine.spec import Sidecar, SidecarError, read_sidecar, sidecar_path

log = logging.getLogger("ensure_engine")
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "export" / "build_engine.py"
LOCK_TIMEOUT_S = 3600.0
"""How long a replica waits for another one's build before giving up (and serving the ONNX)."""
Build = Callable[[list[str]], tuple[int, str]]
"""Runs the build command; returns its exit code and its last error line."""


def args_path(plan: Path) -> Path:
    """Where the build flags of ``plan`` are recorded."""
    return plan.with_name(plan.name + ".args.json")


def miss_reason(
    plan: Path,
    onnx: Path,
    build_args: list[str],
    problems: Callable[[Sidecar], list[str]] = compatibility_problems,
) -> str | None:
    """Why the cached engine cannot be reused (None: it can). ``problems`` checks GPU + TensorRT."""
    if not plan.is_file():
        return f"no engine at {plan}"
    try:
        sidecar = read_sidecar(plan)
    except SidecarError as error:
        return str(error)
    mismatch = problems(sidecar)
    if mismatch:
        return "; ".join(mismatch)
    if sidecar.onnx_sha256 != file_sha256(onnx):
        return f"the engine was built from another ONNX than {onnx}"
    recorded = json.loads(args_path(plan).read_text()) if args_path(plan).is_file() else None
    if recorded != build_args:
        return f"build flags changed: {recorded} -> {build_args}"
    return None


def link_onnx(plan: Path, onnx: Path) -> None:
    """Make ``<engine stem>.onnx`` beside the engine point at the source ONNX (the server's fallback)."""
    link = plan.with_suffix(".onnx")
    if link.resolve() == onnx.resolve():
        return
    link.unlink(missing_ok=True)
    link.symlink_to(onnx.resolve())


def run_build(command: list[str]) -> tuple[int, str]:
    """Run ``build_engine.py`` with its output streamed to ours; the exit code and the last stderr line."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    last = ""
    for line in process.stderr:
        sys.stderr.write(line)
        last = line.strip() or last
    return process.wait(), last


def _fail_loudly(plan: Path, reason: str, code: int) -> None:
    for path in (plan, sidecar_path(plan), args_path(plan)):
        path.unlink(missing_ok=True)  # a stale engine from another ONNX or other flags must not be served
    record = write_build_failure(plan, reason, code)
    log.error("=" * 78)
    log.error("ENGINE BUILD FAILED (exit code %d): %s", code, reason)
    log.error("the server will serve the ONNX with ONNX Runtime instead (CUDA if it loads, else CPU);")
    log.error("/v1/model and the fcn_backend_info metric report the fallback; record: %s", record)
    log.error("=" * 78)


def _build_under_lock(
    plan: Path, onnx: Path, build_args: list[str], problems: Callable[[Sidecar], list[str]], build: Build
) -> None:
    reason = miss_reason(plan, onnx, build_args, problems)  # again: another replica may have built it
    if reason is None:
        log.info("engine cache hit after waiting for the lock: %s was built meanwhile", plan)
        return
    log.info("building %s from %s: %s", plan, onnx, reason)
    args_path(plan).unlink(missing_ok=True)  # a failed build must not leave a "hit" behind
    code, error = build(
        [sys.executable, str(BUILD_SCRIPT), "--onnx", str(onnx), "--out", str(plan), *build_args]
    )
    if code != 0:
        _fail_loudly(plan, error or f"build_engine.py exited with {code}", code)
        return
    write_atomic(args_path(plan), (json.dumps(build_args) + "\n").encode())
    clear_build_failure(plan)
    log.info("engine ready: %s", plan)


def ensure(
    plan: Path,
    onnx: Path,
    build_args: list[str],
    problems: Callable[[Sidecar], list[str]] = compatibility_problems,
    build: Build = run_build,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> int:
    """Reuse or build the engine; returns the process exit code (0 also after a failed build)."""
    if plan.suffix != ".plan":
        log.error("FCN_MODEL must name the engine to make (*.plan), got %s", plan)
        return 2
    if not onnx.is_file():
        log.error("FCN_ENGINE_ONNX %s is not a file (is the model directory mounted at /models?)", onnx)
        return 2
    plan.parent.mkdir(parents=True, exist_ok=True)
    if miss_reason(plan, onnx, build_args, problems) is None:
        log.info("engine cache hit: %s matches this GPU, TensorRT and %s; not rebuilding", plan, onnx.name)
    else:
        try:
            with cache_lock(plan, timeout_s=lock_timeout_s):
                _build_under_lock(plan, onnx, build_args, problems, build)
        except CacheLocked as error:
            log.error("%s; not building: the server serves the ONNX unless the engine appears", error)
    link_onnx(plan, onnx)
    return 0


def main() -> int:
    """Ensure the engine that FCN_MODEL, FCN_ENGINE_ONNX and FCN_ENGINE_BUILD_ARGS describe."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    missing = [name for name in ("FCN_MODEL", "FCN_ENGINE_ONNX") if not os.environ.get(name)]
    if missing:
        log.error("set %s (the GPU image sets both)", " and ".join(missing))
        return 2
    plan, onnx = Path(os.environ["FCN_MODEL"]), Path(os.environ["FCN_ENGINE_ONNX"])
    return ensure(plan, onnx, shlex.split(os.environ.get("FCN_ENGINE_BUILD_ARGS", "")))


if __name__ == "__main__":
    sys.exit(main())
