"""Read an exported ONNX file's ``metadata_props`` without torch (onnx if installed, else ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

from common.metadata import ModelMetadata

PROP_METADATA = "fcn_metadata"
PROP_SHA256 = "source_sha256"
PROP_PRECISION = "precision"


def read_props(path: Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    try:
        import onnx
    except ImportError:  # the server installs only onnxruntime
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def read_metadata(path: Path) -> tuple[ModelMetadata, dict[str, str]]:
    """The ModelMetadata of an exported graph and all its properties; ValueError if it has none."""
    props = read_props(path)
    if PROP_METADATA not in props:
        raise ValueError(f"{path} has no {PROP_METADATA!r} property: export it with `python -m export.onnx`")
    return ModelMetadata.from_json(props[PROP_METADATA]), props
