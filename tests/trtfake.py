"""A fake TensorRT (build and run) and CUDA runtime for machines without a GPU, keeping the real ones' rules.

Rules kept (TensorRT 10.x Python API, onnx-tensorrt's ``docs/operators.md``, cuda-python 13), each one
something the project's code must get right and a test here shows going wrong:

Build side
- ``OnnxParser.parse_from_file`` / ``parse`` really read the ONNX file (``onnx.load``) and return ``False``
  with one ``ParserError`` per broken rule (``code()``, ``desc()``, ``node()``, ``node_name()``,
  ``node_operator()``): a UINT8 tensor read by anything but a ``Cast`` ("UINT8 is only supported as network
  input or output tensor types"; "All UINT8 inputs must directly feed into a cast layer"), a UINT8 tensor
  inside the network, a conversion to or from UINT8 of anything but FLOAT/FLOAT16 (``DataType.UINT8``);
- ``IOptimizationProfile.set_shape`` records the shapes; ``build_serialized_network`` returns ``None``
  (as the real builder does after logging the error) unless every network input has a profile, with
  its name, its rank and ``0 <= min <= opt <= max``;
- ``IBuilderConfig.create_timing_cache(b"")`` starts an empty cache, other bytes are a cache serialized
  by some device; ``set_timing_cache(cache, ignore_mismatch=False)`` returns ``False`` for a cache from
  another GPU or TensorRT version ("A failure will be reported if the CUDA device property in the
  provided cache is different from current environment"), and ``get_timing_cache()`` then returns
  ``None`` ("or None if no timing cache is set");
- the engine inspector (``DETAILED``) lists one layer per convolution, FP16 where the ONNX weights are
  FP16 (strongly typed: the graph's precision); ``myelin=True`` fuses the whole network into one
  ``ForeignNode`` layer, as Myelin does, so no convolution is visible.

Run side
- ``Runtime.deserialize_cuda_engine`` returns ``None`` for a plan it cannot read;
- ``set_input_shape`` returns ``False`` for an unknown or output tensor name, a wrong rank, or a shape
  outside the optimisation profile the engine was built with;
- ``set_tensor_address`` returns ``False`` for a name that is not an I/O tensor of the engine;
- ``execute_async_v3`` returns ``False`` unless every input shape and every I/O address is set and the
  stream is a plain ``int`` (the native handle) of a live stream;
- cuda-python calls return ``(cudaError_t, *values)``; ``cudaError_t`` is a plain ``Enum`` here, so code
  that relies on ``int(error)`` fails (compare with ``cudaError_t.cudaSuccess``); streams are
  ``cudaStream_t``-like objects whose integer handle only ``get_cuda_native_handle`` gives.

What only a real GPU shows: whether the real parser accepts every op and attribute (beyond the UINT8
rules and :mod:`export.trtlint`'s table), kernel numerics and FP16 accuracy, which layers the builder
fuses, real device memory, timing and the timing cache's contents.
"""

from __future__ import annotations

import ctypes
import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest

from common.contract import INPUT_NAME, LABELS_NAME, SCORES_NAME
from common.geometry import Profile

PLAN_MAGIC = b"FAKEPLAN"
CACHE_MAGIC = b"FAKETC1"
NUM_CLASSES = 21
VERSION = "10.13.0.35"
H100 = ("NVIDIA H100 80GB HBM3", "9.0")
DEFAULT_IO = ((INPUT_NAME, "in", "uint8"), (LABELS_NAME, "out", "uint8"), (SCORES_NAME, "out", "float32"))
UINT8, FLOAT, HALF = onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def fake_plan(
    profile: Profile, io: tuple[tuple[str, str, str], ...] = DEFAULT_IO, layers: tuple = ()
) -> bytes:
    """A serialized 'engine': one optimisation profile, its I/O tensors and its inspector layers."""
    body = {
        "profile": [list(s) for s in profile.shapes()],
        "io": [list(t) for t in io],
        "layers": list(layers),
    }
    return PLAN_MAGIC + json.dumps(body).encode()


class cudaError_t(enum.Enum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400


@dataclass(eq=False)
class FakeStream:
    """A ``cudaStream_t``: an object, not an int."""

    handle: int


def get_cuda_native_handle(obj: Any) -> int:
    """``cuda.bindings.utils.get_cuda_native_handle``: the address of a CUDA object as a Python int."""
    if isinstance(obj, FakeStream):
        return obj.handle
    raise TypeError(f"Unknown type: {type(obj)}")


class FakeDevice:
    """cuda-python's runtime calls on host memory: 'device' pointers are ctypes buffers."""

    cudaError_t = cudaError_t

    def __init__(self, gpu: tuple[str, str] = H100) -> None:
        self.gpu = gpu
        self.buffers: dict[int, Any] = {}
        self.copies: list[tuple[str, int]] = []
        self.streams: dict[int, FakeStream] = {}
        self.cudaMemcpyKind = SimpleNamespace(
            cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H", cudaMemcpyDeviceToDevice="D2D"
        )

    def _stream(self, stream: Any) -> FakeStream | None:
        handle = stream.handle if isinstance(stream, FakeStream) else stream
        return self.streams.get(handle) if isinstance(handle, int) else None

    def cudaGetDeviceCount(self) -> tuple[cudaError_t, int]:
        return (cudaError_t.cudaSuccess, 1)

    def cudaGetDeviceProperties(self, device: int) -> tuple[cudaError_t, Any]:
        if device != 0:
            return (cudaError_t.cudaErrorInvalidValue, None)
        major, minor = self.gpu[1].split(".")
        name = self.gpu[0].encode().ljust(256, b"\0")
        return (cudaError_t.cudaSuccess, SimpleNamespace(name=name, major=int(major), minor=int(minor)))

    def cudaSetDevice(self, device: int) -> tuple[cudaError_t]:
        return (cudaError_t.cudaSuccess if device == 0 else cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamCreate(self) -> tuple[cudaError_t, FakeStream]:
        stream = FakeStream(0x1000 + len(self.streams))
        self.streams[stream.handle] = stream
        return (cudaError_t.cudaSuccess, stream)

    def cudaStreamSynchronize(self, stream: Any) -> tuple[cudaError_t]:
        return (
            cudaError_t.cudaSuccess if self._stream(stream) else cudaError_t.cudaErrorInvalidResourceHandle,
        )

    def cudaStreamDestroy(self, stream: Any) -> tuple[cudaError_t]:
        found = self._stream(stream)
        if found is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        del self.streams[found.handle]
        return (cudaError_t.cudaSuccess,)

    def cudaMalloc(self, nbytes: int) -> tuple[cudaError_t, int]:
        buffer = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buffer)] = buffer
        return (cudaError_t.cudaSuccess, ctypes.addressof(buffer))

    def cudaFree(self, pointer: int) -> tuple[cudaError_t]:
        if pointer not in self.buffers:
            return (cudaError_t.cudaErrorInvalidValue,)
        del self.buffers[pointer]
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: str, stream: Any) -> tuple[cudaError_t]:
        if self._stream(stream) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.copies.append((kind, nbytes))
        ctypes.memmove(dst, src, nbytes)
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpy2DAsync(
        self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: str, stream: Any
    ) -> tuple[cudaError_t]:
        if self._stream(stream) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if width > min(dpitch, spitch):
            return (cudaError_t.cudaErrorInvalidValue,)
        self.copies.append((kind, width * height))
        for row in range(height):
            ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
        return (cudaError_t.cudaSuccess,)

    def array(self, pointer: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A device buffer viewed as an array."""
        count = int(np.prod(shape))
        return np.frombuffer(self.buffers[pointer], dtype=dtype, count=count).reshape(shape)


# ---- run side -------------------------------------------------------------------------------------


class FakeEngine:
    """An engine with the plan's I/O (default: ``image``, ``labels`` = channel 0 mod 21, float ``scores``)."""

    def __init__(self, device: FakeDevice, plan: dict[str, Any]) -> None:
        self.device = device
        self.profile = [tuple(shape) for shape in plan["profile"]]
        self.io = {name: (mode, dtype) for name, mode, dtype in plan["io"]}
        self.names = tuple(self.io)
        self.num_io_tensors = len(self.names)
        self.layers = plan.get("layers", [])

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return self.io[name][0]

    def get_tensor_dtype(self, name: str) -> Any:
        return np.dtype(self.io[name][1])

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        if self.io.get(name, ("",))[0] != "in" or index != 0:
            raise IndexError(f"no profile {index} for tensor {name!r}")
        return self.profile

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)

    def create_engine_inspector(self) -> SimpleNamespace:
        information = json.dumps({"Layers": self.layers, "Bindings": list(self.names)})
        return SimpleNamespace(get_engine_information=lambda fmt: information)


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
        if self.engine.io.get(name, ("",))[0] != "in" or len(shape) != len(low):
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

    def execute_async_v3(self, stream_handle: int) -> bool:
        if self.input_shape is None or set(self.addresses) != set(self.engine.names):
            return False
        if type(stream_handle) is not int or stream_handle not in self.engine.device.streams:
            return False
        device = self.engine.device
        image = device.array(self.addresses[INPUT_NAME], self.input_shape, np.uint8)
        labels = device.array(self.addresses[LABELS_NAME], image.shape[:3], np.uint8)
        labels[...] = image[..., 0] % NUM_CLASSES
        return True


# ---- build side -----------------------------------------------------------------------------------


@dataclass
class FakeTimingCache:
    """``ITimingCache``: tied to the GPU and TensorRT version that made it."""

    gpu: tuple[str, str]
    version: str
    entries: int = 0

    def serialize(self) -> memoryview:
        header = {"gpu": list(self.gpu), "version": self.version, "entries": self.entries}
        return memoryview(CACHE_MAGIC + json.dumps(header).encode())

    @classmethod
    def parse(cls, data: bytes) -> FakeTimingCache | None:
        if not data.startswith(CACHE_MAGIC):
            return None
        header = json.loads(data[len(CACHE_MAGIC) :])
        return cls(tuple(header["gpu"]), header["version"], header["entries"])  # type: ignore[arg-type]


@dataclass(frozen=True)
class FakeParserError:
    """``ParserError``."""

    code_: str
    desc_: str
    node_: int
    node_name_: str
    node_operator_: str

    def code(self) -> str:
        return self.code_

    def desc(self) -> str:
        return self.desc_

    def node(self) -> int:
        return self.node_

    def node_name(self) -> str:
        return self.node_name_

    def node_operator(self) -> str:
        return self.node_operator_


@dataclass
class FakeTensor:
    """``ITensor`` of a network input or output."""

    name: str
    dtype: Any
    shape: tuple[int, ...]


@dataclass
class FakeNetwork:
    """``INetworkDefinition`` as the parser fills it."""

    flags: int
    inputs: list[FakeTensor] = field(default_factory=list)
    outputs: list[FakeTensor] = field(default_factory=list)
    model: onnx.ModelProto | None = None

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]


def _tensor(value: onnx.ValueInfoProto) -> FakeTensor:
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return FakeTensor(value.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)), dims)


def uint8_errors(model: onnx.ModelProto) -> list[FakeParserError]:
    """The parser errors TensorRT's UINT8 rules give for ``model`` (in node order)."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    io = {v.name for v in [*graph.input, *graph.output]}
    errors = []
    for index, node in enumerate(graph.node):

        def error(desc: str, index: int = index, node: onnx.NodeProto = node) -> FakeParserError:
            return FakeParserError("UNSUPPORTED_NODE", desc, index, node.name, node.op_type)

        read = [name for name in node.input if types.get(name) == UINT8]
        if read and node.op_type != "Cast":
            errors.append(error(f"UINT8 tensor {read[0]} must directly feed into a cast layer"))
        for output in node.output:
            if types.get(output) == UINT8 and output not in io:
                errors.append(error("UINT8 is only supported as network input or output tensor types"))
        if node.op_type == "Cast":
            source = types.get(node.input[0], 0)
            target = next(a.i for a in node.attribute if a.name == "to")
            if UINT8 in (source, target) and ({source, target} - {UINT8}) - {FLOAT, HALF}:
                errors.append(error("uint8 conversions are only supported for {float32, float16}"))
    return errors


def _layers(model: onnx.ModelProto, myelin: bool) -> list[dict[str, Any]]:
    """Inspector layers: one per convolution, FP16 where its weights are (strongly typed)."""
    weights = {init.name: init.data_type for init in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    half = [weights.get(n.input[1]) == HALF for n in convs]

    def tensor(name: str, fp16: bool) -> dict[str, Any]:
        return {"Name": name, "Format/Datatype": "Row major linear FP16 format" if fp16 else "Float"}

    if myelin:
        name = "{ForeignNode[" + "...".join(n.name for n in convs[:1] + convs[-1:]) + "]}"
        return [{"Name": name, "LayerType": "Myelin", "Outputs": [tensor(f"{name}_out", all(half))]}]
    kinds = {"Conv": "CaskConvolution", "ConvTranspose": "CaskDeconvolutionV2"}
    return [
        {"Name": n.name, "LayerType": kinds[n.op_type], "Outputs": [tensor(f"{n.name}_out", h)]}
        for n, h in zip(convs, half, strict=True)
    ]


class FakeTensorRT:
    """The ``tensorrt`` module as ``engine.runtime`` and ``export.trt`` use it (TensorRT 10.x names).

    ``calls`` records what the build asked for (network flags, workspace, profile shapes, cache bytes).
    """

    def __init__(
        self, device: FakeDevice | None = None, *, version: str = VERSION, myelin: bool = False
    ) -> None:
        self.device = device or FakeDevice()
        self.__version__ = version
        self.myelin = myelin
        self.calls: dict[str, Any] = {}
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
        self.ProfilingVerbosity = SimpleNamespace(DETAILED="detailed")
        self.LayerInformationFormat = SimpleNamespace(JSON="json")
        self.TensorIOMode = SimpleNamespace(INPUT="in")
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        self.Dims = tuple
        fake = self

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int) -> FakeNetwork:
                fake.calls["flags"] = flags
                return FakeNetwork(flags)

            def create_builder_config(self) -> FakeBuilderConfig:
                return FakeBuilderConfig(fake)

            def create_optimization_profile(self) -> FakeProfile:
                return FakeProfile()

            def build_serialized_network(self, network: FakeNetwork, config: FakeBuilderConfig) -> Any:
                return fake.build(network, config)

        class OnnxParser:
            def __init__(self, network: FakeNetwork, logger: Any) -> None:
                self.network = network
                self.errors: list[FakeParserError] = []

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, index: int) -> FakeParserError:
                return self.errors[index]

            def parse_from_file(self, path: str) -> bool:
                return self.parse(Path(path).read_bytes())

            def parse(self, model: bytes, path: str | None = None) -> bool:
                proto = onnx.load_from_string(bytes(model))
                self.errors = uint8_errors(proto)
                if self.errors:
                    return False
                self.network.model = proto
                self.network.inputs = [_tensor(v) for v in proto.graph.input]
                self.network.outputs = [_tensor(v) for v in proto.graph.output]
                return True

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine | None:
                if not bytes(plan).startswith(PLAN_MAGIC):
                    return None
                return FakeEngine(fake.device, json.loads(bytes(plan)[len(PLAN_MAGIC) :]))

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype

    def build(self, network: FakeNetwork, config: FakeBuilderConfig) -> bytes | None:
        """``build_serialized_network``: None (the real builder logs why) for an invalid profile."""
        if network.model is None or len(config.profiles) != 1:
            return None
        shapes = config.profiles[0].shapes
        self.calls["shapes"] = shapes
        for tensor in network.inputs:
            if tensor.name not in shapes:
                return None
            low, opt, high = shapes[tensor.name]
            if not len(low) == len(opt) == len(high) == len(tensor.shape):
                return None
            if any(not 0 <= lo <= op <= hi for lo, op, hi in zip(low, opt, high, strict=True)):
                return None
            fixed = [
                (d, lo, op, hi) for d, lo, op, hi in zip(tensor.shape, low, opt, high, strict=True) if d != -1
            ]
            if any(not lo == op == hi == d for d, lo, op, hi in fixed):
                return None
        if set(shapes) - {t.name for t in network.inputs}:
            return None
        if config.cache is not None:
            config.cache.entries += 1
        low, opt, high = shapes[network.inputs[0].name]
        io = [(t.name, "in", str(t.dtype)) for t in network.inputs]
        io += [(t.name, "out", str(t.dtype)) for t in network.outputs]
        body = {"profile": [low, opt, high], "io": io, "layers": _layers(network.model, self.myelin)}
        return PLAN_MAGIC + json.dumps(body).encode()


class FakeProfile:
    """``IOptimizationProfile``."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class FakeBuilderConfig:
    """``IBuilderConfig``: memory pool, profile, verbosity and the timing cache rules."""

    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake
        self.profiles: list[FakeProfile] = []
        self.cache: FakeTimingCache | None = None
        self.builder_optimization_level = 3
        self.profiling_verbosity = None

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.fake.calls["workspace"] = (pool, size)

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        self.fake.calls["cache_in"] = bytes(data)
        parsed = FakeTimingCache.parse(bytes(data)) if data else None
        return parsed or FakeTimingCache(self.fake.device.gpu, self.fake.__version__)

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        here = (self.fake.device.gpu, self.fake.__version__)
        if (cache.gpu, cache.version) != here and not ignore_mismatch:
            self.cache = None
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.cache


def fake_tensorrt(device: FakeDevice | None = None, **options: Any) -> FakeTensorRT:
    """A :class:`FakeTensorRT` on ``device``."""
    return FakeTensorRT(device, **options)


def install(
    monkeypatch: pytest.MonkeyPatch, device: FakeDevice | None = None, **options: Any
) -> FakeTensorRT:
    """Put the fake TensorRT and CUDA runtime in place of the real ones (``engine.runtime`` and
    ``export.trt``); returns the fake (its ``device`` is the fake GPU)."""
    from engine import runtime
    from export import trt as build

    fake = FakeTensorRT(device, **options)
    monkeypatch.setattr(runtime, "trt", fake)
    monkeypatch.setattr(build, "trt", fake)
    monkeypatch.setattr(runtime, "cudart", fake.device)
    monkeypatch.setattr(runtime, "get_cuda_native_handle", get_cuda_native_handle)
    return fake
