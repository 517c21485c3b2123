"""The forward-pass backends the benchmark times, each ``uint8 [N,H,W,3] → uint8 labels [N,H,W]`` end to end.

A backend that cannot run here (no GPU, no TensorRT, ...) raises :class:`Unavailable` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import ModelSpec, fp32_onnx, int8_onnx, plain_onnx, random_model
from common.contract import INPUT_NAME
from common.geometry import NetworkGeometry, ServingGeometry
from common.onnxrt import create_session

BENCH_PROFILE = ServingGeometry(NetworkGeometry()).engine_profile(max_batch=16)
"""TensorRT profile of the forward benchmark: every bucket of the default geometry, batch 1..16."""


class Unavailable(RuntimeError):
    """The backend cannot run on this machine; the message says why."""


@dataclass
class Runner:
    """A ready backend: ``prepare`` turns a uint8 batch into its input once (untimed), ``run`` is timed."""

    name: str
    device: str
    precision: str
    description: str
    prepare: Callable[[np.ndarray], Any]
    run: Callable[[Any], Any]


@dataclass(frozen=True)
class BuildContext:
    """What every backend factory gets."""

    spec: ModelSpec
    cache: Path
    threads: int
    rebuild: bool = False


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _torch_eager(context: BuildContext, channels_last: bool) -> Runner:
    import torch

    from export.graph import deployable_graph

    _torch_threads(context.threads)
    graph = deployable_graph(random_model(context.spec), context.spec.metadata(), friendly=False)
    if channels_last:
        graph = graph.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return graph(images)

    layout = "channels-last (NHWC)" if channels_last else "NCHW"
    return Runner(
        name="torch-eager-cl" if channels_last else "torch-eager",
        device="cpu",
        precision="fp32",
        description=f"PyTorch eager, deployable graph (normalise + FCN + argmax), {layout}",
        prepare=torch.from_numpy,
        run=run,
    )


def _ort_session(path: Path, threads: int, providers: list[str]) -> Any:
    return create_session(path, providers=providers, intra_op_threads=threads)


def _ort_runner(
    name: str, precision: str, description: str, session: Any, input_name: str = INPUT_NAME
) -> Runner:
    return Runner(
        name=name,
        device="cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu",
        precision=precision,
        description=description,
        prepare=lambda images: {input_name: images},
        run=lambda feed: session.run(None, feed),
    )


def ort_cpu_fp32(context: BuildContext) -> Runner:
    path = fp32_onnx(context.spec, context.cache, context.rebuild)
    session = _ort_session(path, context.threads, ["CPUExecutionProvider"])
    return _ort_runner("ort-cpu-fp32", "fp32", "ONNX Runtime CPU, deployable FP32 graph", session)


def ort_cpu_int8(context: BuildContext) -> Runner:
    path = int8_onnx(context.spec, context.cache, context.rebuild)
    session = _ort_session(path, context.threads, ["CPUExecutionProvider"])
    return _ort_runner("ort-cpu-int8", "int8", "ONNX Runtime CPU, static INT8 (QDQ, per-channel)", session)


def ort_cpu_fp32_plain(context: BuildContext) -> Runner:
    import torch

    from export.graph import Normalize

    path = plain_onnx(context.spec, context.cache, context.rebuild)
    session = _ort_session(path, context.threads, ["CPUExecutionProvider"])
    normalize = Normalize(context.spec.metadata().normalization)

    def prepare(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {"input": np.ascontiguousarray(normalize(torch.from_numpy(images)).numpy())}

    runner = _ort_runner(
        "ort-cpu-fp32-plain", "fp32", "ONNX Runtime CPU, the network alone (float in, scores out)", session
    )
    runner.prepare = prepare
    return runner


def _require_cuda() -> None:
    try:
        import torch
    except ImportError as error:
        raise Unavailable("torch is not installed") from error
    if not torch.cuda.is_available():
        raise Unavailable("no CUDA GPU (torch.cuda.is_available() is False)")


def _require_ort_cuda() -> None:
    """Checked before any export: the full-size ONNX takes minutes to make."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Unavailable("this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)")
    _require_cuda()


def _ort_cuda(context: BuildContext, path: Path, name: str, precision: str, what: str) -> Runner:
    import onnxruntime as ort

    from server.backends.ort import preload_cuda_libraries

    problem = preload_cuda_libraries(ort)
    session = _ort_session(path, context.threads, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise Unavailable(f"ONNX Runtime fell back to {session.get_providers()} {problem}".rstrip())
    return _ort_runner(name, precision, f"ONNX Runtime CUDA EP, {what}", session)


def ort_cuda_fp32(context: BuildContext) -> Runner:
    _require_ort_cuda()
    path = fp32_onnx(context.spec, context.cache, context.rebuild)
    return _ort_cuda(context, path, "ort-cuda-fp32", "fp32", "deployable FP32 graph")


def ort_cuda_fp16(context: BuildContext) -> Runner:
    _require_ort_cuda()
    return _ort_cuda(context, fp16_onnx(context), "ort-cuda-fp16", "fp16", "FP16 graph (export.fp16)")


def _torch_cuda_fp16(context: BuildContext, graphs: bool) -> Runner:
    """The FP16 graph of ``export.fp16`` in PyTorch on the GPU (channels-last), eager or from CUDA graphs."""
    _require_cuda()
    import torch

    from bench.cuda import HalfFCN, Replay
    from export.graph import export_friendly

    torch.backends.cudnn.benchmark = True  # one algorithm search per shape, in the untimed warm-up
    network, _ = export_friendly(random_model(context.spec))
    module = HalfFCN(network, context.spec.metadata().normalization).cuda()
    if graphs:
        replay = Replay(module)
        prepare, run = replay.prepare, replay.run
    else:

        def prepare(images: np.ndarray) -> Any:
            return torch.from_numpy(images).pin_memory()

        def run(pinned: Any) -> np.ndarray:
            with torch.inference_mode():
                return module(pinned.cuda(non_blocking=True)).cpu().numpy()

    how = "one CUDA graph per batch shape" if graphs else "eager"
    return Runner(
        "torch-cuda-fp16-graph" if graphs else "torch-cuda-fp16", "cuda", "fp16",
        f"PyTorch CUDA, FP16 network channels-last ({how}), FP32 normalisation, pinned uint8 in / labels out",
        prepare=prepare, run=run,
    )  # fmt: skip


def fp16_onnx(context: BuildContext) -> Path:
    """The FP16 conversion (``export.fp16``) of the FP32 ONNX, cached beside it."""
    import onnx

    from export.fp16 import convert_to_fp16

    path = Path(context.cache) / f"{context.spec.key}-fp16.onnx"
    if not path.exists() or context.rebuild:
        fp32 = onnx.load(str(fp32_onnx(context.spec, context.cache, context.rebuild)))
        onnx.save(convert_to_fp16(fp32).model, str(path))
    return path


def trt_fp16(context: BuildContext) -> Runner:
    """TensorRT FP16 engine of the FP16 ONNX (``export.fp16``; TensorRT 11 networks are strongly typed)."""
    from engine.runtime import TensorRTRunner, TensorRTUnavailable, environment
    from export import trt

    try:
        environment()
    except TensorRTUnavailable as error:
        raise Unavailable(str(error)) from error
    plan = Path(context.cache) / f"{context.spec.key}-fp16.plan"
    if not plan.exists() or context.rebuild:
        plan.write_bytes(trt.build_engine(fp16_onnx(context), trt.BuildOptions(profile=BENCH_PROFILE)).plan)
    runner = TensorRTRunner(plan)
    return Runner(
        "trt-fp16", "cuda", "fp16", f"TensorRT FP16 engine (profile {BENCH_PROFILE}), uint8 in / labels out",
        prepare=lambda images: images, run=runner.run,
    )  # fmt: skip


BACKENDS: dict[str, Callable[[BuildContext], Runner]] = {
    "torch-eager": lambda context: _torch_eager(context, channels_last=False),
    "torch-eager-cl": lambda context: _torch_eager(context, channels_last=True),
    "ort-cpu-fp32": ort_cpu_fp32,
    "ort-cpu-fp32-plain": ort_cpu_fp32_plain,
    "ort-cpu-int8": ort_cpu_int8,
    "trt-fp16": trt_fp16,
    "ort-cuda-fp32": ort_cuda_fp32,
    "ort-cuda-fp16": ort_cuda_fp16,
    "torch-cuda-fp16": lambda context: _torch_cuda_fp16(context, graphs=False),
    "torch-cuda-fp16-graph": lambda context: _torch_cuda_fp16(context, graphs=True),
}
"""Every backend by name, in report order."""
GPU_BACKENDS = ("torch-cuda-fp16", "torch-cuda-fp16-graph", "ort-cuda-fp32", "ort-cuda-fp16", "trt-fp16")
"""The GPU rows (each skips, saying why, where its GPU, onnxruntime-gpu or TensorRT is missing)."""
