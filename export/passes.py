"""ONNX graph rewrites applied after export (each exact; the export's multi-size check still runs after).

``fold_pool_padding``: the export-friendly ceil-mode pooling is ``Pad(-inf, bottom/right) → MaxPool``.
ONNX ``MaxPool`` takes asymmetric ``pads`` itself (padding never wins a max), so the Pad node, a full
copy of the activation, goes away; in ONNX Runtime that also removes the layout reorders it forced
around every pool (measured: Pad + reorders were ~10% of the kernel time of the width/8 net).

``shapes_from_cast`` and ``labels_via_float``: the uint8 input and output as TensorRT accepts them
(:mod:`export.trtlint` checks the result).
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


def _uint8(value: onnx.ValueInfoProto) -> bool:
    return value.type.tensor_type.elem_type == onnx.TensorProto.UINT8


def shapes_from_cast(model: onnx.ModelProto) -> int:
    """Make the ``Shape``/``Size`` nodes that read a UINT8 graph input read that input's ``Cast`` instead.

    The exporter takes the symbolic H and W from the uint8 ``image`` input itself; TensorRT accepts a
    UINT8 input only when it feeds a Cast directly (:mod:`export.trtlint`). The Cast has the same shape,
    so the graph computes the same; the Cast moves to the front so the node order stays topological.
    Returns how many nodes now read the Cast.
    """
    graph = model.graph
    moved = 0
    for value in [v for v in graph.input if _uint8(v)]:
        readers = [node for node in graph.node if value.name in node.input]
        cast = next((node for node in readers if node.op_type == "Cast"), None)
        if cast is None:
            continue
        for node in readers:
            if node.op_type in ("Shape", "Size"):
                node.input[:] = [cast.output[0] if name == value.name else name for name in node.input]
                moved += 1
        _reorder(graph, [cast, *(node for node in graph.node if node is not cast)])
    return moved


def _reorder(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def labels_via_float(model: onnx.ModelProto) -> int:
    """Route every ``Cast`` to a UINT8 graph output whose source is not FLOAT/FLOAT16 through FLOAT.

    ``labels`` is ``Cast(to=UINT8)`` of ArgMax's INT64 indices; TensorRT's ``DataType.UINT8`` converts only
    from FLOAT/FLOAT16 (:mod:`export.trtlint`), so it becomes ``ArgMax → Cast(FLOAT) → Cast(UINT8)``,
    exact for class indices (< 2**24). Returns how many casts were inserted.
    """
    from export.trtlint import UINT8_CASTABLE, tensor_types

    graph = model.graph
    types = tensor_types(model)
    outputs = {v.name for v in graph.output if _uint8(v)}
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        if (
            node.op_type == "Cast"
            and node.output[0] in outputs
            and types.get(node.input[0]) not in UINT8_CASTABLE
        ):
            source = node.input[0]
            via = helper.make_node(
                "Cast", [source], [f"{source}__float"], name=f"{node.name or source}__via_float", to=1
            )
            node.input[0] = via.output[0]
            ordered.append(via)
        ordered.append(node)
    inserted = len(ordered) - len(graph.node)
    _reorder(graph, ordered)
    return inserted
