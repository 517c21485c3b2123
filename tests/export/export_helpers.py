"""Helpers shared by the export tests (imported by name: tests/export is on sys.path under pytest)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from training.model import FCNBase, build_model

WIDTH = 1 / 16
"""Backbone width of the test models: small enough for 2 CPU cores."""


def random_model(architecture: str = "fcn8s", width: float = WIDTH, seed: int = 0) -> FCNBase:
    """A freshly built FCN whose (zero-initialised) score layers get random weights, so labels vary."""
    torch.manual_seed(seed)
    model = build_model(architecture, 21, width)
    with torch.no_grad():
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(model, name):
                layer = getattr(model, name)
                layer.weight.normal_(std=0.5)
                layer.bias.normal_(std=0.5)
    return model.eval()


class TiedScores(torch.nn.Module):
    """A reference "network" with a constructed near tie: class 0 scores ``mean(rgb) / 255`` and class 1
    the same minus ``gap``; class 2 scores one less. Returns (labels, scores) like
    ``deployable_graph(..., scores=True)``."""

    scores = True

    def __init__(self, gap: float) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0.0, -gap, -1.0]).reshape(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grey = image.float().mean(dim=3, keepdim=True).permute(0, 3, 1, 2) / 255
        scores = grey + self.offsets
        return scores.argmax(1).to(torch.uint8), scores


def tied_onnx(offsets: list[float]) -> onnx.ModelProto:
    """TiedScores as an ONNX graph (image uint8 NHWC -> labels uint8), with ``offsets`` instead."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axis"], ["mean"], keepdims=1),
        helper.make_node("Transpose", ["mean"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Div", ["nchw", "scale"], ["grey"]),
        helper.make_node("Add", ["grey", "offsets"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["index"], axis=1, keepdims=0),
        helper.make_node("Cast", ["index"], ["labels"], to=TensorProto.UINT8),
    ]
    initializers = [
        numpy_helper.from_array(np.array([3], np.int64), "axis"),
        numpy_helper.from_array(np.array(255, np.float32), "scale"),
        numpy_helper.from_array(np.asarray(offsets, np.float32).reshape(1, 3, 1, 1), "offsets"),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, ["N", "H", "W"])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
