"""The one way this project opens ONNX Runtime sessions and reads an ONNX file's metadata (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from common.contract import PROP_METADATA
from common.metadata import ModelMetadata

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

CPU: tuple[str, ...] = ("CPUExecutionProvider",)
Optimization = Literal["all", "basic", "none"]


def session_options(
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 1,
    spinning: bool | None = None,
    optimization: Optimization = "all",
) -> ort.SessionOptions:
    """Session options: thread counts (0 = ONNX Runtime's default, all cores), intra-op spin-waiting
    (``False`` where the pool shares cores with other work; ``None`` keeps ORT's default), graph
    optimisation level, warnings only."""
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    return options


def create_session(
    model: Path | str | bytes | onnx.ModelProto,
    *,
    providers: Sequence[str] = CPU,
    intra_op_threads: int = 0,
    inter_op_threads: int = 1,
    spinning: bool | None = None,
    optimization: Optimization = "all",
) -> ort.InferenceSession:
    """An ``InferenceSession`` over a file, serialized bytes or an in-memory ``onnx.ModelProto``."""
    import onnxruntime as ort

    source: str | bytes
    if isinstance(model, (str, Path)):
        source = str(model)
    elif isinstance(model, bytes):
        source = model
    else:
        source = model.SerializeToString()
    options = session_options(
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        spinning=spinning,
        optimization=optimization,
    )
    return ort.InferenceSession(source, sess_options=options, providers=list(providers))


def read_props(path: Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file (with onnx if installed, else an unoptimised ORT session)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    try:
        import onnx
    except ImportError:  # the server installs only onnxruntime
        session = create_session(path, optimization="none")
        return dict(session.get_modelmeta().custom_metadata_map)
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def read_metadata(path: Path) -> tuple[ModelMetadata, dict[str, str]]:
    """The ModelMetadata of an exported graph and all its properties; ValueError if it has none."""
    props = read_props(path)
    if PROP_METADATA not in props:
        raise ValueError(f"{path} has no {PROP_METADATA!r} property: export it with `python -m export.onnx`")
    return ModelMetadata.from_json(props[PROP_METADATA]), props
