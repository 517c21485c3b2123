"""Building TensorRT engines from the deployable ONNX graph (running them is :mod:`engine.runtime`'s job).

TensorRT comes from :mod:`engine.runtime`, the project's one ``tensorrt`` import; without it every entry
point raises :class:`~engine.runtime.TensorRTUnavailable`. The API used is valid for TensorRT 10.12+ and
11.x: strongly typed networks (the flag is passed where it exists); no builder precision flags.

Before TensorRT sees the graph, :mod:`export.trtlint` checks it on the CPU (the node that breaks a
documented parser rule is named). The timing cache: ``IBuilderConfig.set_timing_cache(cache,
ignore_mismatch=False)`` "reports a failure if the CUDA device property in the provided cache is different
from current environment" by returning ``False``, after which ``get_timing_cache()`` returns ``None``; a
refused cache is replaced by a fresh one (never used with ``ignore_mismatch``: a cache from other device
properties "may lead to functional/performance bugs"), and the file is written atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.geometry import Profile
from engine.cache import write_atomic
from engine.runtime import logger, require_tensorrt, trt
from export.trtlint import TensorRTGraphError
from export.trtlint import check as check_tensorrt_graph


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
    notes: tuple[str, ...] = ()
    """What the build had to work around (e.g. a refused timing cache), for the log."""


def _parser_error(error: Any) -> str:
    where = ""
    node_name = getattr(error, "node_name", None)
    if callable(node_name) and node_name():
        operator = getattr(error, "node_operator", lambda: "")()
        where = f" at node {node_name()}" + (f" ({operator})" if operator else "")
    return f"{error.code()}: {error.desc()}{where}"


def build_engine(onnx_path: Path, options: BuildOptions) -> BuiltEngine:
    """Lint, parse an ONNX file into a strongly typed network and build a serialized engine."""
    require_tensorrt()
    try:
        check_tensorrt_graph(Path(onnx_path))
    except TensorRTGraphError as error:
        raise EngineBuildError(str(error)) from None
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
    notes: list[str] = []
    reused = _attach_timing_cache(config, options.timing_cache, notes)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_time = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError("TensorRT could not build the engine (its log above says why)")
    if options.timing_cache is not None:
        tuned = config.get_timing_cache()
        if tuned is None:
            notes.append("no timing cache to save (the builder holds none)")
        else:
            write_atomic(options.timing_cache, bytes(tuned.serialize()))
    plan = bytes(serialized)
    engine = trt.Runtime(log).deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("the freshly built engine does not deserialize")
    information = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return BuiltEngine(plan, str(information), build_time, reused, tuple(notes))


def _attach_timing_cache(config: Any, path: Path | None, notes: list[str]) -> bool:
    """Give the builder the timing cache at ``path`` (a fresh one when there is none, or TensorRT refuses
    it); returns whether the file's cache is in use."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    if data and config.set_timing_cache(config.create_timing_cache(data), False):
        return True
    if data:
        notes.append(f"TensorRT refused the timing cache {path} (made on another GPU?): starting a fresh one")
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        notes.append("TensorRT refused even an empty timing cache: building without one")
    return False
