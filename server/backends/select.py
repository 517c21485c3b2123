"""Backend choice. ``auto``: TensorRT with a compatible engine and a GPU, else ORT CUDA, else the faster of
ONNX Runtime and OpenVINO on the CPU (measured at load, :mod:`server.tuning`)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.backends.base import Backend, BackendError
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
    """A decision: which backend, which file, and whether ORT should ask for CUDA."""

    backend: str
    path: Path
    use_cuda: bool = False


def _is_engine(path: Path) -> bool:
    return path.suffix in ENGINE_SUFFIXES


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
            log.warning(
                "no GPU/TensorRT for engine %s: falling back to ONNX Runtime on %s", path.name, onnx.name
            )
            return Choice("onnxruntime", onnx, use_cuda=ort_cuda)
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
        except BackendError as exc:
            onnx = choice.path.with_suffix(".onnx")
            if settings.backend != "auto" or not onnx.is_file():
                raise
            log.warning("%s; falling back to ONNX Runtime on %s", exc, onnx.name)
            choice = Choice("onnxruntime", onnx, use_cuda=env.gpu and env.ort_cuda)
    from server.tuning import load_measured

    return load_measured(choice, settings, openvino=env.openvino)
