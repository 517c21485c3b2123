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


def ort_cuda_fp32(context: BuildContext) -> Runner:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Unavailable("this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)")
    _require_cuda()
    path = fp32_onnx(context.spec, context.cache, context.rebuild)
    session = _ort_session(path, context.threads, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise Unavailable(f"ONNX Runtime fell back to {session.get_providers()} (no usable CUDA device)")
    return _ort_runner("ort-cuda-fp32", "fp32", "ONNX Runtime CUDA EP, deployable FP32 graph", session)


def torch_cuda_fp16(context: BuildContext) -> Runner:
    _require_cuda()
    import torch

    from export.graph import deployable_graph

    graph = deployable_graph(random_model(context.spec), context.spec.metadata(), friendly=False).cuda()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            return graph(torch.from_numpy(images).cuda(non_blocking=True)).cpu().numpy()

    return Runner(
        "torch-cuda-fp16", "cuda", "fp16", "PyTorch eager CUDA, autocast FP16, host uint8 in / labels out",
        prepare=lambda images: images, run=run,
    )  # fmt: skip


def trt_fp16(context: BuildContext) -> Runner:
    """TensorRT FP16 engine of the FP16 ONNX (``export.fp16``; TensorRT 11 networks are strongly typed)."""
    from engine.runtime import TensorRTRunner, TensorRTUnavailable, environment
    from export import trt

    try:
        environment()
    except TensorRTUnavailable as error:
        raise Unavailable(str(error)) from error
    import onnx

    from export.fp16 import convert_to_fp16

    plan = Path(context.cache) / f"{context.spec.key}-fp16.plan"
    if not plan.exists() or context.rebuild:
        fp16 = plan.with_suffix(".onnx")
        onnx.save(convert_to_fp16(onnx.load(str(fp32_onnx(context.spec, context.cache)))).model, str(fp16))
        plan.write_bytes(trt.build_engine(fp16, trt.BuildOptions(profile=BENCH_PROFILE)).plan)
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
    "torch-cuda-fp16": torch_cuda_fp16,
}
"""Every backend by name, in report order."""
