"""Graph rewrites after export: exact, and only where they apply."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from export.passes import fold_pool_padding

from .conftest import Exported


def pad_pool_model(value: float, pads: list[int]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, None, None])
    inits = [
        numpy_helper.from_array(np.array(pads, dtype=np.int64), "pads"),
        numpy_helper.from_array(np.array(value, dtype=np.float32), "value"),
    ]
    nodes = [
        helper.make_node("Pad", ["x", "pads", "value"], ["padded"], mode="constant"),
        helper.make_node("MaxPool", ["padded"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


def test_fold_is_exact_for_odd_and_even_sizes() -> None:
    model = pad_pool_model(float("-inf"), [0, 0, 0, 0, 0, 0, 1, 1])
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_pool_padding(folded) == 1
    assert [n.op_type for n in folded.graph.node] == ["MaxPool"] and not folded.graph.initializer
    onnx.checker.check_model(folded, full_check=True)
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (5, 8), (7, 7), (10, 3)]:
        x = rng.normal(size=(1, 2, h, w)).astype(np.float32) - 3  # negative: a zero pad would show
        np.testing.assert_array_equal(run(folded, x), run(model, x))


def test_other_pads_are_left_alone() -> None:
    for value, pads in [(0.0, [0, 0, 0, 0, 0, 0, 1, 1]), (float("-inf"), [0, 0, 1, 0, 0, 0, 1, 1])]:
        model = pad_pool_model(value, pads)
        assert fold_pool_padding(model) == 0 and len(model.graph.node) == 2


def test_exported_graph_has_no_pad_nodes(exported: Exported) -> None:
    model = onnx.load(str(exported.onnx))
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 5 and not [n for n in model.graph.node if n.op_type == "Pad"]
    assert all(
        list(helper.get_attribute_value(a)) == [0, 0, 1, 1]
        for p in pools
        for a in p.attribute
        if a.name == "pads"
    )
