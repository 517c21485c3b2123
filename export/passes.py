"""ONNX graph rewrites applied after export (each exact; the export's multi-size check still runs after).

``fold_pool_padding``: the export-friendly ceil-mode pooling is ``Pad(-inf, bottom/right) → MaxPool``.
ONNX ``MaxPool`` takes asymmetric ``pads`` itself (padding never wins a max), so the Pad node, a full
copy of the activation, goes away; in ONNX Runtime that also removes the layout reorders it forced
around every pool (measured: Pad + reorders were ~10% of the kernel time of the width/8 net).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def fold_pool_padding(model: onnx.ModelProto) -> int:
    """Fold ``Pad(constant -inf, end of H/W only) → MaxPool`` into the MaxPool's pads; returns how many."""
    graph = model.graph
    constants = _constants(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or _attribute(pad, "mode", b"constant") not in (b"constant", "constant"):
            continue
        users = consumers.get(pad.output[0], [])
        if len(users) != 1 or users[0].op_type != "MaxPool" or pad.output[0] in outputs or len(pad.input) < 3:
            continue
        pool = users[0]
        pads = constants.get(pad.input[1])
        value = constants.get(pad.input[2])
        if pads is None or value is None or (len(pad.input) > 3 and pad.input[3]):
            continue
        if not (
            value.size == 1 and math.isinf(float(value.reshape(-1)[0])) and float(value.reshape(-1)[0]) < 0
        ):
            continue
        pads = [int(p) for p in pads.reshape(-1)]
        if len(pads) != 8 or any(pads[:6]) or min(pads) < 0 or _attribute(pool, "ceil_mode", 0):
            continue
        pool_pads = list(_attribute(pool, "pads", [0, 0, 0, 0]))  # type: ignore[call-overload]
        if any(pool_pads) or _attribute(pool, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        pool.input[0] = pad.input[0]
        kept = [a for a in pool.attribute if a.name != "pads"]
        del pool.attribute[:]
        pool.attribute.extend([*kept, helper.make_attribute("pads", [0, 0, pads[6], pads[7]])])
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return len(folded)
