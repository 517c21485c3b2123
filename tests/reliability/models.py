"""Tiny ONNX models with the deployable graph's interface, for starting real servers without the demo model.

The good model maps ``uint8 image [N,H,W,3]`` to ``uint8 labels [N,H,W]`` with ``label = red // 13`` (0..19),
so every served label map is predictable from the input. The broken variants cover start-up faults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.metadata import ModelMetadata

OPSET = 18
IR_VERSION = 10  # what ONNX Runtime 1.31 loads (onnx 1.23 writes 14 by default)
LABEL_DIVISOR = 13


def expected_labels(rgb: np.ndarray) -> np.ndarray:
    """The labels the good tiny model gives for a uint8 ``[H, W, 3]`` RGB image."""
    return (rgb[..., 0] // LABEL_DIVISOR).astype(np.uint8)


def _metadata_props(model: onnx.ModelProto, name: str) -> None:
    props = {
        "fcn_metadata": ModelMetadata(name=name, width=1 / 32).to_json(),
        "source_sha256": "0" * 64,
        "precision": "fp32",
    }
    onnx.helper.set_model_props(model, props)


def tiny_label_model(name: str = "tiny-red-div13") -> onnx.ModelProto:
    """The good model: red channel integer-divided by 13, as uint8 labels."""
    nodes = [
        helper.make_node("Slice", ["image", "c0", "c1", "c3"], ["red4"]),
        helper.make_node("Squeeze", ["red4", "c3"], ["red"]),
        helper.make_node("Cast", ["red"], ["red32"], to=TensorProto.INT32),
        helper.make_node("Div", ["red32", "divisor"], ["q32"]),
        helper.make_node("Cast", ["q32"], ["labels"], to=TensorProto.UINT8),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "c0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "c1"),
        numpy_helper.from_array(np.array([3], dtype=np.int64), "c3"),
        numpy_helper.from_array(np.array(LABEL_DIVISOR, dtype=np.int32), "divisor"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_labels",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, ["N", "H", "W"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    _metadata_props(model, name)
    onnx.checker.check_model(model)
    return model


def wrong_architecture_model() -> onnx.ModelProto:
    """A valid ONNX file with another interface: float ``[N,3,H,W]`` in, float out (not a segmenter)."""
    node = helper.make_node("Relu", ["input"], ["output"])
    graph = helper.make_graph(
        [node],
        "not_fcn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def half_resolution_model() -> onnx.ModelProto:
    """The right interface (uint8 NHWC in, uint8 labels out) but labels at half the input size, as an FCN
    without its final upsampling would give: only running it (the warm-up) reveals the problem."""
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes", "steps"], ["red4"]),
        helper.make_node("Squeeze", ["red4", "c3"], ["labels"]),
    ]
    big = np.iinfo(np.int64).max
    inits = [
        numpy_helper.from_array(np.array([0, 0, 0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([big, big, 1], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([2, 2, 1], dtype=np.int64), "steps"),
        numpy_helper.from_array(np.array([3], dtype=np.int64), "c3"),
    ]
    graph = helper.make_graph(
        nodes,
        "half_labels",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, ["N", "h", "w"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    _metadata_props(model, "half-resolution")
    onnx.checker.check_model(model)
    return model


def write_models(folder: Path) -> dict[str, Path]:
    """Write the good, truncated, wrong-interface and half-resolution models into ``folder``, by role.

    ``missing`` names a path that does not exist.
    """
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "tiny.onnx"
    onnx.save(tiny_label_model(), good)
    truncated = folder / "truncated.onnx"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    wrong = folder / "wrong-architecture.onnx"
    onnx.save(wrong_architecture_model(), wrong)
    half = folder / "half-resolution.onnx"
    onnx.save(half_resolution_model(), half)
    return {
        "good": good,
        "truncated": truncated,
        "wrong": wrong,
        "half": half,
        "missing": folder / "missing.onnx",
    }
