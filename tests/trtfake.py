"""A fake TensorRT runtime and CUDA device for machines without a GPU, keeping the real ones' rules.

Rules kept (TensorRT 10/11 ``IExecutionContext`` and cuda-python's runtime API, as documented):
- ``Runtime.deserialize_cuda_engine`` returns ``None`` for a plan it cannot read;
- ``set_input_shape`` returns ``False`` for an unknown or output tensor name, a wrong rank, or a shape
  outside the optimisation profile the engine was built with;
- ``set_tensor_address`` returns ``False`` for a name that is not an I/O tensor of the engine;
- ``execute_async_v3`` returns ``False`` unless every input shape and every I/O address is set;
- ``get_tensor_profile_shape`` returns the (min, opt, max) shapes of the built profile;
- cuda-python calls return ``(error, *values)`` tuples, error ``0`` on success; streams are plain ints.

What only a real GPU can show: kernel numerics, FP16 accuracy, the builder's layer fusions, real
device memory and timing. The plan a fake build writes (:func:`fake_plan`) records its profile, so an
engine "built" by ``build_engine.py`` under the fake runs only the shapes the real one would.
"""

from __future__ import annotations

import ctypes
import json
from types import SimpleNamespace
from typing import Any

import numpy as np

from common.contract import INPUT_NAME, LABELS_NAME, SCORES_NAME
from common.geometry import Profile

PLAN_MAGIC = b"FAKEPLAN"
NUM_CLASSES = 21


def fake_plan(profile: Profile) -> bytes:
    """A serialized 'engine' with one optimisation profile."""
    return PLAN_MAGIC + json.dumps(profile.shapes()).encode()


class FakeDevice:
    """cuda-python's runtime calls on host memory: 'device' pointers are ctypes buffers."""

    def __init__(self) -> None:
        self.buffers: dict[int, Any] = {}
        self.copies: list[tuple[str, int]] = []
        self.streams: set[int] = set()
        self.cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")

    def cudaSetDevice(self, device: int) -> tuple[int]:
        return (0,)

    def cudaStreamCreate(self) -> tuple[int, int]:
        handle = 0x1000 + len(self.streams)
        self.streams.add(handle)
        return (0, handle)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,) if stream in self.streams else (400,)  # cudaErrorInvalidResourceHandle

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        if stream not in self.streams:
            return (400,)
        self.streams.discard(stream)
        return (0,)

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:
        buffer = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buffer)] = buffer
        return (0, ctypes.addressof(buffer))

    def cudaFree(self, pointer: int) -> tuple[int]:
        if pointer not in self.buffers:
            return (1,)  # cudaErrorInvalidValue
        del self.buffers[pointer]
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: str, stream: int) -> tuple[int]:
        if stream not in self.streams:
            return (400,)
        self.copies.append((kind, nbytes))
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def array(self, pointer: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A device buffer viewed as an array."""
        count = int(np.prod(shape))
        return np.frombuffer(self.buffers[pointer], dtype=dtype, count=count).reshape(shape)


class FakeEngine:
    """An engine with input ``image``, outputs ``labels`` (channel 0 mod 21) and float ``scores``."""

    names = (INPUT_NAME, LABELS_NAME, SCORES_NAME)

    def __init__(self, device: FakeDevice, profile: list[list[int]]) -> None:
        self.device = device
        self.profile = [tuple(shape) for shape in profile]
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name == INPUT_NAME else "out"

    def get_tensor_dtype(self, name: str) -> Any:
        return np.float32 if name == SCORES_NAME else np.uint8

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        if name != INPUT_NAME or index != 0:
            raise IndexError(f"no profile {index} for tensor {name!r}")
        return self.profile

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    """``IExecutionContext`` with the documented failure returns."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.input_shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}
        self.rejected: list[tuple[int, ...]] = []

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        low, _, high = self.engine.profile
        if name != INPUT_NAME or len(shape) != len(low):
            return False
        if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high, strict=True)):
            self.rejected.append(shape)
            return False
        self.input_shape = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        assert self.input_shape is not None, "get_tensor_shape before set_input_shape"
        n, h, w, _ = self.input_shape
        return {INPUT_NAME: self.input_shape, LABELS_NAME: (n, h, w), SCORES_NAME: (n, NUM_CLASSES, h, w)}[
            name
        ]

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        if name not in self.engine.names:
            return False
        self.addresses[name] = int(pointer)
        return True

    def execute_async_v3(self, stream: int) -> bool:
        if self.input_shape is None or set(self.addresses) != set(self.engine.names):
            return False
        if not isinstance(stream, int) or stream not in self.engine.device.streams:
            return False
        device = self.engine.device
        image = device.array(self.addresses[INPUT_NAME], self.input_shape, np.uint8)
        labels = device.array(self.addresses[LABELS_NAME], image.shape[:3], np.uint8)
        labels[...] = image[..., 0] % NUM_CLASSES
        return True


def fake_tensorrt(device: FakeDevice) -> SimpleNamespace:
    """The ``tensorrt`` module as ``engine.runtime`` uses it, running :func:`fake_plan` plans."""

    def deserialize(plan: bytes) -> FakeEngine | None:
        if not plan.startswith(PLAN_MAGIC):
            return None
        return FakeEngine(device, json.loads(plan[len(PLAN_MAGIC) :])[0:3])

    runtime = SimpleNamespace(deserialize_cuda_engine=deserialize)
    logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    return SimpleNamespace(
        Builder=object,
        __version__="10.13.0.35",
        Logger=logger,
        Runtime=lambda logger: runtime,
        TensorIOMode=SimpleNamespace(INPUT="in"),
        nptype=lambda dtype: dtype,
    )
