"""One-shot engine step of the GPU deployment: build the TensorRT engine only when the cache lacks a good one.

An engine runs only on the GPU model and TensorRT version it was built for, so it is built on the target
machine, into the engine-cache volume, and reused while its sidecar still matches:

    engine = $FCN_MODEL (default /engines/fcn8s-demo.plan), built from $FCN_ENGINE_ONNX
    cache hit  <=> engine + sidecar exist, sidecar matches this GPU + TensorRT, and was built from this ONNX
                   with the same $FCN_ENGINE_BUILD_ARGS (recorded in <engine>.args.json)
    otherwise  -> python export/build_engine.py --onnx ONNX --out ENGINE $FCN_ENGINE_BUILD_ARGS

Either way the ONNX is linked beside the engine (<engine stem>.onnx), so the server's ``auto`` backend can
fall back to ONNX Runtime if the engine is refused. Exit 0 when the cache holds a usable engine.
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
from engine.runtime import compatibility_problems
from engine.spec import Sidecar, SidecarError, read_sidecar

log = logging.getLogger("ensure_engine")
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "export" / "build_engine.py"


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


def ensure(
    plan: Path,
    onnx: Path,
    build_args: list[str],
    problems: Callable[[Sidecar], list[str]] = compatibility_problems,
    build: Callable[[list[str]], int] = lambda cmd: subprocess.run(cmd, check=False).returncode,
) -> int:
    """Reuse or build the engine; returns the process exit code."""
    if plan.suffix != ".plan":
        log.error("FCN_MODEL must name the engine to make (*.plan), got %s", plan)
        return 2
    if not onnx.is_file():
        log.error("FCN_ENGINE_ONNX %s is not a file (is the model directory mounted at /models?)", onnx)
        return 2
    reason = miss_reason(plan, onnx, build_args, problems)
    if reason is None:
        log.info("engine cache hit: %s matches this GPU, TensorRT and %s; not rebuilding", plan, onnx.name)
    else:
        log.info("building %s from %s: %s", plan, onnx, reason)
        plan.parent.mkdir(parents=True, exist_ok=True)
        args_path(plan).unlink(missing_ok=True)  # a failed build must not leave a "hit" behind
        code = build(
            [sys.executable, str(BUILD_SCRIPT), "--onnx", str(onnx), "--out", str(plan), *build_args]
        )
        if code != 0:
            log.error("build_engine.py failed with exit code %d", code)
            return code
        args_path(plan).write_text(json.dumps(build_args) + "\n")
        log.info("engine ready: %s", plan)
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
