"""Which precision an engine's layers really run in, from the engine inspector's JSON.

Built with ``ProfilingVerbosity.DETAILED``, ``IEngineInspector.get_engine_information(JSON)`` lists
every layer with the data type of its inputs and outputs: ``"Format/Datatype"`` in TensorRT 10
(``"Half"`` or e.g. ``"Row major linear FP16 format"``), separate ``"DataType"``/``"Format"`` fields in
TensorRT 11. An FP16 build is accepted only if its convolutions really produce FP16 — TensorRT 11
silently builds FP32 from an FP32 graph, whatever the caller meant.

When TensorRT fuses the convolutions (a Myelin ``ForeignNode``, or any layer whose type no longer says
"convolution"), the inspector shows none. A strongly typed build keeps the graph's types, so a graph whose
convolutions are all FP16 (:func:`graph_convolutions`) is FP16 by construction: accepted with a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TYPE_FIELDS = ("Format/Datatype", "DataType", "Format")


class PrecisionError(RuntimeError):
    """The engine does not run in the precision it was meant to."""


@dataclass(frozen=True)
class PrecisionReport:
    """Counts of layers and convolution layers by output precision."""

    layers: int
    fp16_layers: int
    convolutions: int
    fp16_convolutions: int
    fp32_convolution_names: tuple[str, ...]

    def summary(self) -> str:
        return (
            f"{self.fp16_layers}/{self.layers} layers and {self.fp16_convolutions}/{self.convolutions} "
            "convolution layers produce FP16"
        )


def _tensor_type(tensor: Any) -> str:
    if not isinstance(tensor, dict):
        return ""
    return " ".join(str(tensor.get(key, "")) for key in TYPE_FIELDS).lower()


def _is_fp16(text: str) -> bool:
    return "half" in text or "fp16" in text


def _is_convolution(layer: dict[str, Any]) -> bool:
    kinds = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}".lower()
    return "convolution" in kinds


def layer_precisions(engine_information: str) -> PrecisionReport:
    """Parse ``get_engine_information(LayerInformationFormat.JSON)`` of a DETAILED-verbosity engine."""
    try:
        layers = json.loads(engine_information)["Layers"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise PrecisionError(f"engine information is not the inspector's JSON ({error})") from None
    if not layers or not all(isinstance(layer, dict) for layer in layers):
        raise PrecisionError(
            "engine information has no per-layer details: build with ProfilingVerbosity.DETAILED"
        )
    fp16 = conv = fp16_conv = 0
    fp32_convs = []
    for layer in layers:
        outputs = " ".join(_tensor_type(t) for t in layer.get("Outputs", []))
        half = _is_fp16(outputs)
        fp16 += half
        if _is_convolution(layer):
            conv += 1
            fp16_conv += half
            if not half:
                fp32_convs.append(str(layer.get("Name", "?")))
    return PrecisionReport(len(layers), fp16, conv, fp16_conv, tuple(fp32_convs))


def graph_convolutions(onnx_path: Path) -> tuple[int, int]:
    """(FP16, all) ``Conv``/``ConvTranspose`` nodes of an ONNX file, by the type of their weight."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    weights = {init.name: init.data_type for init in model.graph.initializer}
    convs = [node for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose")]
    fp16 = sum(weights.get(node.input[1]) == onnx.TensorProto.FLOAT16 for node in convs)
    return fp16, len(convs)


def check_fp16(
    report: PrecisionReport,
    allowed_fp32_convolutions: int = 0,
    *,
    graph: tuple[int, int] = (0, 0),
) -> list[str]:
    """Raise unless the convolutions run in FP16 (up to ``allowed_fp32_convolutions`` kept in FP32).

    ``graph`` is :func:`graph_convolutions` of the ONNX the engine was built from: with no convolution
    layer visible in the inspector, an all-FP16 graph passes and the returned warning says so.
    """
    if report.convolutions == 0:
        fp16, total = graph
        if total and fp16 == total:
            return [
                f"the engine inspector shows no convolution layer (fused, e.g. into a Myelin ForeignNode); "
                f"accepted as FP16 by construction: all {total} convolutions of the strongly typed graph are "
                f"FP16 ({report.fp16_layers}/{report.layers} layers produce FP16)"
            ]
        raise PrecisionError(
            "the engine inspector shows no convolution layer and the graph's convolutions are not all FP16 "
            f"({fp16}/{total}): not an FCN engine, or not an FP16 graph"
        )
    fp32 = report.convolutions - report.fp16_convolutions
    if report.fp16_convolutions == 0 or fp32 > allowed_fp32_convolutions:
        names = ", ".join(report.fp32_convolution_names[:5])
        raise PrecisionError(
            f"expected an FP16 engine but {fp32} of {report.convolutions} convolution layers run in FP32 "
            f"(e.g. {names}); build from the FP16 ONNX (python -m export.fp16)"
        )
    return []
