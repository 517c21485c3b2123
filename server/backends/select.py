"""Backend choice. ``auto``: TensorRT with a compatible engine and a GPU, else ORT CUDA, else the faster of
ONNX Runtime and OpenVINO on the CPU (measured at load, :mod:`server.tuning`).

Whenever ``auto`` serves something slower than the deployment meant (an engine that failed to build, one
TensorRT refuses, no TensorRT, CUDA that does not load), the backend carries the reasons as
:class:`~server.backends.base.Fallback` entries: logged as errors here, shown by ``/v1/model`` and the
``fcn_backend_info`` metric. A failed engine build is recognised by ``docker/ensure_engine.py``'s record
beside the engine (``engine.cache.read_build_failure``).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.backends.base import Backend, BackendError, Fallback
from server.settings import Settings

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".plan", ".engine")
BackendLoader = Callable[[Settings], Backend]
"""Loads the backend of ``settings.model`` (tests pass their own: ``lambda _: backend``)."""


@dataclass(frozen=True)
class Environment:
    """What this machine offers, probed once; tests pass their own."""

    gpu: bool
    tensorrt: bool
    ort_cuda: bool
    """The onnxruntime build has the CUDA provider (``get_available_providers``); whether it loads is
    known only from a session (``OnnxRuntimeBackend.provider``)."""
    openvino: bool = False

    @classmethod
    def probe(cls) -> Environment:
        """Look for an NVIDIA GPU (driver nodes), TensorRT, onnxruntime-gpu's CUDA provider and OpenVINO."""
        gpu = Path("/dev/nvidia0").exists() or any(Path("/proc/driver/nvidia/gpus").glob("*"))
        from engine.runtime import tensorrt_available

        tensorrt = tensorrt_available()
        ort_cuda = False
        if importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime as ort

            ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        from server.backends import openvino

        return cls(gpu=gpu, tensorrt=tensorrt, ort_cuda=ort_cuda, openvino=openvino.available())


@dataclass(frozen=True)
class Choice:
    """A decision: which backend, which file, whether ORT should ask for CUDA, and why it falls back."""

    backend: str
    path: Path
    use_cuda: bool = False
    fallback: tuple[Fallback, ...] = ()


def _is_engine(path: Path) -> bool:
    return path.suffix in ENGINE_SUFFIXES


def engine_fallback(engine: Path, kind: str, detail: str) -> Fallback:
    """Why ``engine`` is not served: its failed build where ensure_engine recorded one, else ``detail``."""
    from engine.cache import read_build_failure

    failure = read_build_failure(engine)
    if failure is not None:
        return Fallback("engine_build_failed", f"the engine build failed: {failure}")
    return Fallback(kind, detail)


def choose(settings: Settings, env: Environment) -> Choice:
    """Pure selection logic; raises BackendError with the reason when nothing fits."""
    path = settings.model
    ort_cuda = env.gpu and env.ort_cuda
    if settings.backend == "tensorrt":
        if not _is_engine(path):
            raise BackendError(f"backend 'tensorrt' needs a TensorRT engine (.plan), got {path.name}")
        if not (env.gpu and env.tensorrt):
            raise BackendError(
                "backend 'tensorrt' needs an NVIDIA GPU and the tensorrt package; neither is optional"
            )
        return Choice("tensorrt", path)
    if settings.backend in ("onnxruntime", "openvino"):
        if _is_engine(path):
            raise BackendError(
                f"backend '{settings.backend}' needs an .onnx model, got the engine {path.name}"
            )
        if settings.backend == "openvino":
            if not env.openvino:
                raise BackendError("backend 'openvino' needs the openvino package (pip install openvino)")
            return Choice("openvino", path)
        return Choice("onnxruntime", path, use_cuda=ort_cuda)
    # auto
    if _is_engine(path):
        if env.gpu and env.tensorrt:
            return Choice("tensorrt", path)
        onnx = path.with_suffix(".onnx")
        if onnx.is_file():
            missing = "an NVIDIA GPU" if not env.gpu else "the tensorrt package"
            reason = engine_fallback(path, "no_tensorrt", f"engine {path.name} needs {missing}")
            log.error("%s: falling back to ONNX Runtime on %s", reason.detail, onnx.name)
            return Choice("onnxruntime", onnx, use_cuda=ort_cuda, fallback=(reason,))
        raise BackendError(
            f"engine {path.name} needs an NVIDIA GPU with TensorRT, and no {onnx.name} is beside it"
        )
    engine = path.with_suffix(".plan")
    if env.gpu and env.tensorrt and engine.is_file():
        return Choice("tensorrt", engine)
    return Choice("onnxruntime", path, use_cuda=ort_cuda)


def load_backend(settings: Settings, env: Environment | None = None) -> Backend:
    """Load the backend ``settings`` asks for (``auto`` falls back from a refused engine to ONNX Runtime)."""
    env = env or Environment.probe()
    choice = choose(settings, env)
    if choice.backend == "tensorrt":
        from server.backends.tensorrt import TensorRTBackend

        try:
            return TensorRTBackend(
                choice.path,
                max_batch_size=settings.max_batch_size,
                max_side=settings.max_side,
                granularity=settings.bucket,
            )
        except (RuntimeError, OSError) as exc:  # BackendError, a CUDA / TensorRT error, an unreadable file
            onnx = choice.path.with_suffix(".onnx")
            if settings.backend != "auto" or not onnx.is_file():
                raise
            reason = engine_fallback(choice.path, "engine_unusable", str(exc))
            log.error("%s; falling back to ONNX Runtime on %s", reason.detail, onnx.name)
            choice = Choice("onnxruntime", onnx, use_cuda=env.gpu and env.ort_cuda, fallback=(reason,))
    from server.tuning import load_measured

    return load_measured(choice, settings, openvino=env.openvino)
