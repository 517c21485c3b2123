"""The TensorRT runtime: the environment probe, the compatibility check and the engine runner.

The only module that imports ``tensorrt`` (and the CUDA runtime binding from ``cuda-python``); the
build (``export/trt.py``) takes :data:`trt` from here. It imports without them: every entry point
raises :class:`TensorRTUnavailable` naming what is missing. The API used is valid for TensorRT 10.12+
and 11.x: named I/O tensors, ``execute_async_v3``.

CUDA objects of ``cuda-bindings`` (a ``cudaStream_t``) are passed to TensorRT as the plain integer
``cuda.bindings.utils.get_cuda_native_handle(obj)`` returns ("Returns the address of the provided CUDA
Python object as a Python int"), not ``int(obj)``, which cuda-bindings 13 deprecates; errors are compared
with ``cudaError_t.cudaSuccess``, not with ``0``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.contract import INPUT_NAME, LABELS_NAME
from engine.spec import Sidecar, mismatches


class TensorRTUnavailable(RuntimeError):
    """TensorRT, the CUDA runtime binding or a CUDA GPU is missing (the message says which)."""


try:
    import tensorrt as trt
except ImportError:  # pragma: no cover - depends on the machine
    trt = None  # type: ignore[assignment]

try:
    from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    from cuda.bindings.utils import get_cuda_native_handle
except ImportError:  # pragma: no cover - depends on the machine
    cudart = None

    def get_cuda_native_handle(obj: Any) -> int:
        """Without cuda-bindings there is no CUDA object to unwrap (every entry point says it is missing)."""
        raise TensorRTUnavailable("the CUDA runtime binding is not installed (pip install cuda-python)")


@dataclass(frozen=True)
class Environment:
    """The local TensorRT version and GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def tensorrt_available() -> bool:
    """Whether the real TensorRT package is importable (not only ``tensorrt-stubs``' empty namespace)."""
    return trt is not None and hasattr(trt, "Builder")


def require_tensorrt() -> None:
    """Raise :class:`TensorRTUnavailable` unless TensorRT is installed."""
    if not tensorrt_available():
        raise TensorRTUnavailable("TensorRT is not installed (pip install tensorrt, from NVIDIA's index)")


def _cudart() -> Any:
    if cudart is None:
        raise TensorRTUnavailable("the CUDA runtime binding is not installed (pip install cuda-python)")
    return cudart


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


def _succeeded(error: Any) -> bool:
    return bool(error == _cudart().cudaError_t.cudaSuccess)


def _check(result: Any) -> Any:
    """Unpack a cuda-python ``(error, *values)`` tuple, raising on an error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if not _succeeded(error):
        name = getattr(error, "name", str(error))
        raise RuntimeError(f"CUDA runtime error {name}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu(device: int = 0) -> tuple[str, str]:
    """The GPU's name and compute capability (needs the CUDA runtime binding, not TensorRT)."""
    runtime = _cudart()
    error, count = runtime.cudaGetDeviceCount()
    if not _succeeded(error) or count == 0:
        raise TensorRTUnavailable(f"no CUDA GPU found ({getattr(error, 'name', error)})")
    properties = _check(runtime.cudaGetDeviceProperties(device))
    name = properties.name
    name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
    return name, f"{properties.major}.{properties.minor}"


def environment(device: int = 0) -> Environment:
    """TensorRT version, GPU name and compute capability; :class:`TensorRTUnavailable` if any is missing."""
    require_tensorrt()
    return Environment(str(trt.__version__), *gpu(device))


def logger() -> Any:
    """A TensorRT logger at WARNING level."""
    require_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def compatibility_problems(sidecar: Sidecar) -> list[str]:
    """Why an engine cannot run on this machine: :func:`~engine.spec.mismatches` against the local GPU
    and TensorRT, or why they cannot be queried (empty when it can run)."""
    try:
        local = environment()
    except TensorRTUnavailable as error:
        return [str(error)]
    return mismatches(
        sidecar,
        gpu_name=local.gpu_name,
        compute_capability=local.compute_capability,
        tensorrt_version=local.tensorrt_version,
    )


class DeviceBuffer:
    """A device allocation that grows on demand."""

    def __init__(self) -> None:
        self.pointer = 0
        self.size = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.size:
            self.free()
            self.pointer = int(_check(_cudart().cudaMalloc(nbytes)))
            self.size = nbytes
        return self.pointer

    def free(self) -> None:
        if self.pointer:
            _check(_cudart().cudaFree(self.pointer))
            self.pointer = self.size = 0


class TensorRTRunner:
    """Runs a plan: uint8 ``[N, H, W, 3]`` → uint8 labels ``[N, H, W]``; only the labels come back.

    One execution context on one CUDA stream; calls are serialised with a lock (create one runner per
    stream for concurrency).
    """

    def __init__(self, plan_path: Path, device: int = 0) -> None:
        require_tensorrt()
        runtime = _cudart()
        _check(runtime.cudaSetDevice(device))
        self._engine = trt.Runtime(logger()).deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self._engine is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} cannot deserialize {plan_path}: built with another "
                "TensorRT version or for another GPU? Rebuild it with python export/build_engine.py"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in inputs]
        if inputs != [INPUT_NAME] or LABELS_NAME not in self._outputs:
            raise RuntimeError(
                f"{plan_path}: expected input '{INPUT_NAME}' and output '{LABELS_NAME}', got {names}"
            )
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        low, _, high = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.min_shape, self.max_shape = _dims(low), _dims(high)
        self._context = self._engine.create_execution_context()
        self._stream = _check(runtime.cudaStreamCreate())
        self._stream_handle = get_cuda_native_handle(self._stream)
        self._buffers = {n: DeviceBuffer() for n in names}
        self._lock = threading.Lock()

    def run(self, images: np.ndarray) -> np.ndarray:
        """Labels for a uint8 NHWC batch within the engine's optimisation profile."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
        shape = tuple(int(d) for d in images.shape)
        if any(s < lo or s > hi for s, lo, hi in zip(shape, self.min_shape, self.max_shape, strict=True)):
            raise ValueError(
                f"input {list(shape)} is outside the engine profile {self.min_shape}..{self.max_shape}"
            )
        images = np.ascontiguousarray(images)
        runtime = _cudart()
        with self._lock:
            if not self._context.set_input_shape(INPUT_NAME, shape):
                raise ValueError(f"TensorRT rejected the input shape {list(shape)}")
            pointer = self._buffers[INPUT_NAME].ensure(images.nbytes)
            _check(
                runtime.cudaMemcpyAsync(
                    pointer, images.ctypes.data, images.nbytes, _host_to_device(), self._stream
                )
            )
            self._set_address(INPUT_NAME, pointer)
            labels = np.empty(0, dtype=np.uint8)
            for name in self._outputs:
                out_shape = _dims(self._context.get_tensor_shape(name))
                nbytes = int(np.prod(out_shape)) * self._dtypes[name].itemsize
                self._set_address(name, self._buffers[name].ensure(max(nbytes, 1)))
                if name == LABELS_NAME:
                    labels = np.empty(out_shape, dtype=self._dtypes[name])
            if not self._context.execute_async_v3(self._stream_handle):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            source = self._buffers[LABELS_NAME].pointer
            _check(
                runtime.cudaMemcpyAsync(
                    labels.ctypes.data, source, labels.nbytes, _device_to_host(), self._stream
                )
            )
            _check(runtime.cudaStreamSynchronize(self._stream))
        return labels.astype(np.uint8, copy=False)

    def _set_address(self, name: str, pointer: int) -> None:
        if not self._context.set_tensor_address(name, pointer):
            raise RuntimeError(f"TensorRT refused the device address of tensor {name!r}")

    def close(self) -> None:
        """Free device buffers and the stream."""
        with self._lock:
            for buffer in self._buffers.values():
                buffer.free()
            if self._stream is not None:
                _check(_cudart().cudaStreamDestroy(self._stream))
                self._stream = None


def _host_to_device() -> Any:
    return _cudart().cudaMemcpyKind.cudaMemcpyHostToDevice


def _device_to_host() -> Any:
    return _cudart().cudaMemcpyKind.cudaMemcpyDeviceToHost
