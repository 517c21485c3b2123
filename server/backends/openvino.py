"""OpenVINO backend: the same deployable ONNX file on Intel's CPU runtime; one infer request per instance.

The model is compiled once with ``NUM_STREAMS`` = instances (OpenVINO splits the cores between the
streams) and FP32 inference precision for FP32 graphs, so labels match ONNX Runtime's; a QDQ (INT8)
graph runs in INT8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.contract import INPUT_NAME, LABELS_NAME, PROP_PRECISION
from common.onnxrt import read_props
from server.backends.base import BackendError, Fallback
from server.backends.ort import check_signature, metadata_from_props
from server.backends.slots import Slots

ORT_TYPES = {"u8": "tensor(uint8)", "f32": "tensor(float)", "i64": "tensor(int64)"}
"""OpenVINO element types as ONNX Runtime names them (for the one signature check)."""


def available() -> bool:
    """Whether the ``openvino`` package is installed."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoBackend:
    """A compiled OpenVINO model with ``instances`` streams and infer requests."""

    name = "openvino"

    def __init__(
        self, path: Path, *, instances: int = 1, threads: int = 0, fallback: tuple[Fallback, ...] = ()
    ) -> None:
        if not path.is_file():
            raise BackendError(f"model file not found: {path}")
        try:
            import openvino as ov
        except ImportError:
            raise BackendError(
                "backend 'openvino' needs the openvino package (pip install openvino)"
            ) from None
        props = read_props(path)
        self.metadata = metadata_from_props(path, props)
        self.precision = props.get(PROP_PRECISION, "fp32")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise BackendError(f"OpenVINO cannot read {path}: {str(exc).splitlines()[0][:200]}") from None
        check_signature(path, _signature(model.inputs), _signature(model.outputs))
        config = {
            "PERFORMANCE_HINT": "THROUGHPUT" if instances > 1 else "LATENCY",
            "NUM_STREAMS": str(instances),
            "INFERENCE_NUM_THREADS": str(instances * threads),
        }
        if self.precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = core.compile_model(model, "CPU", config)
        self._requests = Slots([compiled.create_infer_request() for _ in range(instances)])
        self._compiled = compiled
        self.instances = instances
        self.selection: dict[str, Any] = {}
        self.fallback = fallback
        self.provider = f"CPU ({compiled.get_property('NUM_STREAMS')} streams)"

    def run(self, images: np.ndarray) -> np.ndarray:
        """Labels for a uint8 NHWC batch, on the next free infer request."""
        with self._requests.take() as request:
            request.infer({INPUT_NAME: images})
            return np.array(request.get_tensor(LABELS_NAME).data, copy=True)

    def close(self) -> None:
        """Drop the infer requests and the compiled model."""
        self._requests.items.clear()
        del self._compiled


def _signature(ports: list[Any]) -> dict[str, tuple[str, int]]:
    """``{name: (ONNX Runtime type name, rank)}`` of OpenVINO model ports."""
    return {
        port.get_any_name(): (
            ORT_TYPES.get(port.get_element_type().get_type_name(), "?"),
            port.get_partial_shape().rank.get_length(),
        )
        for port in ports
    }
