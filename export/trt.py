"""Building TensorRT engines from the deployable ONNX graph (running them is :mod:`engine.runtime`'s job).

TensorRT comes from :mod:`engine.runtime`, the project's one ``tensorrt`` import; without it every entry
point raises :class:`~engine.runtime.TensorRTUnavailable`. The API used is valid for TensorRT 10.12+ and
11.x: strongly typed networks (the flag is passed where it exists); no builder precision flags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.geometry import Profile
from engine.runtime import logger, require_tensorrt, trt


class EngineBuildError(RuntimeError):
    """The ONNX parser or the builder failed (the message holds every parser error)."""


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings (see ``python export/build_engine.py --help``)."""

    profile: Profile
    """Derive it from the serving geometry: ``ServingGeometry.engine_profile``."""
    workspace_bytes: int = 4 << 30
    optimization_level: int = 3
    timing_cache: Path | None = None


@dataclass(frozen=True)
class BuiltEngine:
    """A serialized engine and its inspector JSON."""

    plan: bytes
    engine_information: str
    build_time_s: float
    timing_cache_reused: bool


def _parser_error(error: Any) -> str:
    where = ""
    node_name = getattr(error, "node_name", None)
    if callable(node_name) and node_name():
        operator = getattr(error, "node_operator", lambda: "")()
        where = f" at node {node_name()}" + (f" ({operator})" if operator else "")
    return f"{error.code()}: {error.desc()}{where}"


def build_engine(onnx_path: Path, options: BuildOptions) -> BuiltEngine:
    """Parse an ONNX file into a strongly typed network and build a serialized engine."""
    require_tensorrt()
    log = logger()
    builder = trt.Builder(log)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10.x opt-in; 11.x networks are always strongly typed
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"the ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    low, opt, high = (trt.Dims(list(shape)) for shape in options.profile.shapes())
    profile.set_shape(network.get_input(0).name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_path = options.timing_cache
    reused = cache_path is not None and cache_path.is_file() and cache_path.stat().st_size > 0
    cache = config.create_timing_cache(cache_path.read_bytes() if reused and cache_path else b"")
    config.set_timing_cache(cache, False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_time = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError("TensorRT could not build the engine (its log above says why)")
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    plan = bytes(serialized)
    engine = trt.Runtime(log).deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("the freshly built engine does not deserialize")
    information = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return BuiltEngine(plan, str(information), build_time, reused)
