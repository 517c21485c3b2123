"""A CPU check of an ONNX graph against the TensorRT ONNX parser's documented rules (a lint, not a parser).

Run before every engine build (:func:`export.trt.build_engine`) and in the export's verification
(``python -m export.onnx``, ``python -m export.fp16``), so a graph TensorRT would reject fails on the machine
that made it, with the node named, instead of at the first start on a GPU. The rules, and where they
come from:

1. **UINT8 only as a network input or output** (onnx-tensorrt ``docs/operators.md``: "UINT8 is only
   supported as network input or output tensor types"): a UINT8 tensor is a graph input or output, and
   every node that reads one is a ``Cast`` ("All UINT8 inputs must directly feed into a cast layer",
   NVIDIA/TensorRT#3985). ``Shape`` lists no UINT8 input either.
2. **UINT8 conversions only to/from FLOAT or FLOAT16** (TensorRT's ``DataType.UINT8``: "uint8 conversions
   are only supported for {float32, float16}"). ``ICastLayer``'s page says every type but FP8 converts;
   the two disagree, and the graph is made valid under the strict reading.
3. **Ops and types**: every op is one of the ops this project's deployable graphs use (:data:`SUPPORTED`),
   and its data input has a type operators.md lists for that op. An op outside the table is reported
   too: check operators.md, then add it here.
4. **No DOUBLE tensors** (operators.md: limited support, cast down with clamping).

Only onnx is needed (no torch, no TensorRT). What only a real parser shows: attribute restrictions,
shape-tensor rules, and anything TensorRT changed after the version of operators.md cited here (10.x).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

FLOAT, HALF, BF16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
INT8, INT32, INT64 = TensorProto.INT8, TensorProto.INT32, TensorProto.INT64
UINT8, BOOL, DOUBLE = TensorProto.UINT8, TensorProto.BOOL, TensorProto.DOUBLE

_FLOATS = frozenset({FLOAT, HALF, BF16})
_NUMBERS = _FLOATS | {INT32, INT64}
_ANY = _NUMBERS | {BOOL}
_LAYOUT_OPS = ("Shape", "Squeeze", "Unsqueeze", "Reshape", "Slice", "Transpose", "Concat", "Gather",
               "Identity", "Flatten", "Constant")  # fmt: skip
SUPPORTED: dict[str, frozenset[int]] = {
    **dict.fromkeys(("Conv", "ConvTranspose", "MaxPool", "AveragePool", "QuantizeLinear"), _FLOATS),
    **dict.fromkeys(("Add", "Sub", "Mul", "Div", "Relu", "Pad", "ArgMax"), _NUMBERS),
    **dict.fromkeys(_LAYOUT_OPS, _ANY),
    "Cast": _ANY | {UINT8},
    "DequantizeLinear": frozenset({INT8}),
}
"""Op type → element types of its data input (its output for ``Constant``), from onnx-tensorrt's
``docs/operators.md`` (TensorRT 10.x): the ops the deployable FP32, FP16 and QDQ graphs use."""
UINT8_CASTABLE = frozenset({FLOAT, HALF})


class TensorRTGraphError(ValueError):
    """The graph breaks a documented TensorRT parser constraint (the message lists every problem)."""


@dataclass(frozen=True)
class Problem:
    """One broken rule at one node."""

    node: str
    op_type: str
    message: str

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op_type}): {self.message}"


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type) if elem_type else "unknown"


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor onnx's shape inference can type (inputs, initializers, values)."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({init.name: init.data_type for init in graph.initializer})
    return {name: elem for name, elem in types.items() if elem}


def lint(model: onnx.ModelProto) -> list[Problem]:
    """Every broken rule of the module docstring, in node order (empty: the graph passes)."""
    types = tensor_types(model)
    graph = model.graph
    io = {v.name for v in [*graph.input, *graph.output]}
    problems: list[Problem] = []
    for index, node in enumerate(graph.node):
        name, op = node.name or f"#{index}", node.op_type
        if op not in SUPPORTED:
            problems.append(Problem(name, op, "op type not in the TensorRT lint's table (export/trtlint.py)"))
            continue
        for tensor in [t for t in node.input if t]:
            if types.get(tensor) == UINT8 and op != "Cast":
                problems.append(
                    Problem(
                        name,
                        op,
                        f"reads the UINT8 tensor {tensor!r}: TensorRT takes UINT8 only as a "
                        "network input feeding a Cast (read the Cast's output instead)",
                    )
                )
        data = node.output[0] if op == "Constant" else (node.input[0] if node.input else "")
        data_type = types.get(data, 0)
        if data_type and data_type not in SUPPORTED[op] and data_type != UINT8:
            problems.append(
                Problem(name, op, f"{_type_name(data_type)} {data!r} is not a type TensorRT's {op} takes")
            )
        for output in node.output:
            if types.get(output) == UINT8 and output not in io:
                problems.append(Problem(name, op, f"makes the UINT8 tensor {output!r} inside the network"))
            if types.get(output) == DOUBLE:
                problems.append(Problem(name, op, f"makes the DOUBLE tensor {output!r}"))
        if op == "Cast":
            problems.extend(_cast_problems(node, name, types))
    return problems


def _cast_problems(node: onnx.NodeProto, name: str, types: dict[str, int]) -> list[Problem]:
    source = types.get(node.input[0], 0)
    target = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), 0)
    if target not in SUPPORTED["Cast"]:
        return [Problem(name, "Cast", f"casts to {_type_name(target)}, not a TensorRT type")]
    if UINT8 in (source, target) and source and ({source, target} - {UINT8}) - UINT8_CASTABLE:
        return [
            Problem(
                name,
                "Cast",
                f"converts {_type_name(source)} to {_type_name(target)}: TensorRT converts "
                "UINT8 only from/to FLOAT or FLOAT16 (cast through FLOAT)",
            )
        ]
    return []


def check(model: onnx.ModelProto | Path, what: str = "the graph") -> None:
    """Raise :class:`TensorRTGraphError` naming every problem :func:`lint` finds."""
    if isinstance(model, Path):
        what = str(model)
        model = onnx.load(str(model), load_external_data=False)
    problems = lint(model)
    if problems:
        raise TensorRTGraphError(
            f"{what} breaks TensorRT's ONNX parser rules (export/trtlint.py):\n  "
            + "\n  ".join(str(p) for p in problems)
        )
