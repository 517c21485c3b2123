"""FP32 ONNX → FP16 ONNX with FP32 islands, and its label agreement with the FP32 model.

    python -m export.fp16 --onnx model.onnx --out model-fp16.onnx [--images data/synth] [--keep-nodes ...]

TensorRT 11 has no FP16 builder flag: a network is strongly typed, so FP16 must be in the ONNX graph
itself. The conversion keeps the graph's contract (uint8 ``image`` in, uint8 ``labels`` out, float32
``scores`` if present) and, by default, keeps in FP32 the input normalisation (everything before the
first convolution: three cheap channels, and FP16 would round the fractional Caffe mean) and ``ArgMax``
(its input is cast back to FP32, which is exact). Further nodes can be kept in FP32 by name or op
type. Casts are inserted at every boundary between the FP16 and FP32 parts.

The label agreement with the FP32 model is measured on the CPU (ONNX Runtime when it runs FP16
convolutions, otherwise onnx's reference evaluator) and gated tie-aware (:mod:`export.agreement`): near
ties are reported apart, real disagreements may be at most 0.5% of the pixels (``--min-agreement``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    import onnxruntime as ort

from common.contract import INPUT_NAME, LABELS_NAME, PROP_PRECISION
from common.onnxrt import create_session
from export.agreement import FP16_GATE, Agreement, Gate, compare, scores_name, with_scores_output
from export.images import validation_images
from export.trtlint import check as check_tensorrt_graph

FP16_OP_TYPES = frozenset(
    {
        "Add", "ArgMax", "AveragePool", "Concat", "Conv", "ConvTranspose", "Div", "Flatten", "Identity",
        "MaxPool", "Mul", "Pad", "Relu", "Reshape", "Slice", "Squeeze", "Sub", "Transpose", "Unsqueeze",
    }
)  # fmt: skip
"""Op types that may run in FP16 (each has FP16 kernels in TensorRT; any FLOAT input becomes FLOAT16)."""
DEFAULT_KEEP_OP_TYPES: tuple[str, ...] = ("ArgMax",)
MIN_AGREEMENT = 1 - FP16_GATE.max_real
CONV_OPS = frozenset({"Conv", "ConvTranspose"})


class AgreementError(RuntimeError):
    """FP16 labels disagree for real with FP32 labels on too many pixels."""


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert_to_fp16` did."""

    model: onnx.ModelProto
    fp16_nodes: int
    fp32_nodes: list[str]
    """Float nodes kept in FP32 (names or, for unnamed ones, op types)."""
    casts: int


def log(message: str) -> None:
    """One progress line."""
    print(f"[fp16] {message}", flush=True)


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def preprocessing_nodes(graph: onnx.GraphProto) -> set[int]:
    """Indices of the nodes that do not depend on any convolution's output (the input normalisation)."""
    downstream: set[str] = set()
    after_conv: set[int] = set()
    for index, node in enumerate(graph.node):
        if node.op_type in CONV_OPS or any(name in downstream for name in node.input):
            downstream.update(node.output)
            after_conv.add(index)
    return set(range(len(graph.node))) - after_conv


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.op_type


def convert_to_fp16(
    model: onnx.ModelProto,
    *,
    keep_nodes: Iterable[str] = (),
    keep_op_types: Iterable[str] = DEFAULT_KEEP_OP_TYPES,
    keep_preprocessing: bool = True,
) -> Conversion:
    """An FP16 copy of ``model``: FLOAT tensors of every eligible node become FLOAT16, I/O types unchanged."""
    types = _float_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep_names, keep_ops = set(keep_nodes), set(keep_op_types)
    unknown = keep_names - {n.name for n in graph.node}
    if unknown:
        raise ValueError(f"no nodes named {sorted(unknown)} in the graph")
    kept_pre = preprocessing_nodes(graph) if keep_preprocessing else set()

    def is_float(name: str) -> bool:
        return types.get(name) == TensorProto.FLOAT

    low = {
        i
        for i, node in enumerate(graph.node)
        if node.op_type in FP16_OP_TYPES
        and any(is_float(o) for o in node.output)
        and node.name not in keep_names
        and node.op_type not in keep_ops
        and i not in kept_pre
    }
    consumers: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, set()).add(i)
    initializers = {init.name: init for init in graph.initializer}
    fp16_tensors = {o for i in low for o in graph.node[i].output if is_float(o)}

    casts: dict[str, onnx.NodeProto] = {}
    pending: dict[int, list[onnx.NodeProto]] = {}

    def cast(name: str, to: int, before: int) -> str:
        suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
        key = f"{name}__to_{suffix}"
        if key not in casts:
            casts[key] = helper.make_node("Cast", [name], [key], name=key, to=to)
            pending.setdefault(before, []).append(casts[key])
        return key

    for i, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            if i in low and is_float(name):
                if name in initializers and consumers[name] <= low:
                    array = numpy_helper.to_array(initializers[name]).astype(np.float16)
                    initializers[name].CopyFrom(numpy_helper.from_array(array, name))
                    types[name] = TensorProto.FLOAT16
                elif name not in fp16_tensors and types.get(name) != TensorProto.FLOAT16:
                    node.input[slot] = cast(name, TensorProto.FLOAT16, i)
            elif i not in low and name in fp16_tensors:
                node.input[slot] = cast(name, TensorProto.FLOAT, i)

    ordered = []
    for i, node in enumerate(graph.node):
        ordered.extend(pending.get(i, []))
        ordered.append(node)
    tail = []
    for output in graph.output:
        if output.name in fp16_tensors:  # keep the output FLOAT: compute it as name__fp16, cast at the end
            internal = f"{output.name}__fp16"
            for node in ordered:
                node.input[:] = [internal if name == output.name else name for name in node.input]
                node.output[:] = [internal if name == output.name else name for name in node.output]
            tail.append(
                helper.make_node("Cast", [internal], [output.name], name=f"{output.name}__output", to=1)
            )
    del graph.node[:]
    graph.node.extend([*ordered, *tail])
    del graph.value_info[:]
    kept = [
        _label(n)
        for i, n in enumerate(model.graph.node)
        if i not in low
        and any(is_float(t) for t in [*n.input, *n.output])
        and n.op_type not in ("Constant", "Shape")  # no float arithmetic
    ]
    _set_precision(out, "fp16")
    onnx.checker.check_model(out, full_check=True)
    return Conversion(out, len(low), kept, len(casts) + len(tail))


def _set_precision(model: onnx.ModelProto, precision: str) -> None:
    for prop in model.metadata_props:
        if prop.key == PROP_PRECISION:
            prop.value = precision
            return
    model.metadata_props.add(key=PROP_PRECISION, value=precision)


class Runner:
    """Runs an ONNX model on the CPU: ONNX Runtime if it can, else onnx's reference evaluator.

    ONNX Runtime's CPU kernels compute in FP32: for an FP16 graph it casts around every node. With
    ``fp16_tensors`` its graph optimisations are off, so those casts stay and every tensor between two
    ops is rounded to FP16 (with optimisations on it would fold them away and keep FP32 activations).
    """

    def __init__(self, model: onnx.ModelProto, *, fp16_tensors: bool = False) -> None:
        try:
            self._session: ort.InferenceSession | None = create_session(
                model, optimization="none" if fp16_tensors else "all"
            )
            self.engine = "onnxruntime CPU" + (
                " (FP16 tensors between ops, FP32 arithmetic)" if fp16_tensors else ""
            )
        except Exception as error:  # ORT raises its own types (e.g. NOT_IMPLEMENTED for FP16 kernels)
            from onnx.reference import ReferenceEvaluator

            self._session = None
            self._reference = ReferenceEvaluator(model)
            self.engine = f"onnx reference evaluator ({str(error).splitlines()[0][:120]})"

    def run(self, names: Sequence[str], images: np.ndarray) -> list[np.ndarray]:
        """The named outputs for a uint8 NHWC batch."""
        if self._session is not None:
            return list(self._session.run(list(names), {INPUT_NAME: images}))
        return list(self._reference.run(list(names), {INPUT_NAME: images}))

    def labels(self, images: np.ndarray) -> np.ndarray:
        """uint8 labels of a uint8 NHWC batch."""
        return self.run([LABELS_NAME], images)[0]


def label_agreement(
    fp32: onnx.ModelProto, fp16: onnx.ModelProto, images: Sequence[np.ndarray], gate: Gate = FP16_GATE
) -> tuple[Agreement, str]:
    """Tie-aware agreement of the FP16 labels with the FP32 labels and scores over ``images``, and what
    ran the FP16 model."""
    reference, candidate = Runner(with_scores_output(fp32)), Runner(fp16, fp16_tensors=True)
    outputs = [LABELS_NAME, scores_name(fp32)]
    total = Agreement()
    for image in images:
        batch = image[None]
        labels, scores = reference.run(outputs, batch)
        total = total.add(compare(scores, labels, candidate.labels(batch), gate))
    return total, candidate.engine


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", type=Path, required=True, help="FP32 ONNX from python -m export.onnx")
    parser.add_argument("--out", type=Path, required=True, help="FP16 ONNX to write")
    parser.add_argument("--keep-nodes", nargs="*", default=[], metavar="NAME", help="node names kept in FP32")
    parser.add_argument(
        "--keep-op-types", nargs="*", default=list(DEFAULT_KEEP_OP_TYPES), metavar="OP",
        help="op types kept in FP32 (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--convert-preprocessing", action="store_true", help="also run the input normalisation in FP16"
    )
    parser.add_argument("--images", type=Path, help="VOC-layout folder whose val split is measured")
    parser.add_argument("--count", type=int, default=16, help="validation images to measure (default 16)")
    parser.add_argument("--size", type=int, default=160, help="side of synthetic images without --images")
    parser.add_argument(
        "--min-agreement", type=float, default=MIN_AGREEMENT,
        help="gate: share of pixels equal or near ties (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--tie-atol", type=float, default=FP16_GATE.atol, help="near-tie tolerance (%(default)s)"
    )
    parser.add_argument(
        "--tie-rtol", type=float, default=FP16_GATE.rtol, help="near-tie tolerance per unit of top score"
    )
    args = parser.parse_args(argv)
    gate = Gate(args.tie_atol, args.tie_rtol, 1 - args.min_agreement)
    start = time.perf_counter()
    try:
        fp32 = onnx.load(str(args.onnx))
        log(f"converting {args.onnx} ({len(fp32.graph.node)} nodes)")
        conversion = convert_to_fp16(
            fp32, keep_nodes=args.keep_nodes, keep_op_types=args.keep_op_types,
            keep_preprocessing=not args.convert_preprocessing,
        )  # fmt: skip
        kept = len(conversion.fp32_nodes)
        log(f"{conversion.fp16_nodes} nodes in FP16, {kept} kept in FP32, {conversion.casts} casts")
        log(f"kept in FP32: {', '.join(conversion.fp32_nodes) or 'none'}")
        check_tensorrt_graph(conversion.model, f"the FP16 graph of {args.onnx}")
        log("the TensorRT graph lint (export/trtlint.py) passed")
        images = validation_images(args.images, args.count, (args.size, args.size))
        source = f"{args.images} (val)" if args.images else f"synthetic scenes {args.size}x{args.size}"
        log(f"measuring label agreement with FP32 on {len(images)} images from {source}")
        agreement, engine = label_agreement(fp32, conversion.model, images, gate)
        log(f"FP16 ran on {engine}")
        log(f"label agreement FP16 vs FP32: {agreement.summary()} (gate: {gate.describe()})")
        if not agreement.passes(gate):
            raise AgreementError(
                f"FP16 labels disagree with FP32 for real on {100 * agreement.real_share:.3f}% of pixels "
                f"({agreement.summary()}), gate {gate.describe()}: keep more nodes in FP32 "
                "(--keep-nodes / --keep-op-types)"
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(conversion.model, str(args.out))
    except (AgreementError, FileNotFoundError, ValueError, onnx.checker.ValidationError) as error:
        print(f"fp16 conversion failed: {error}", file=sys.stderr)
        return 1
    size_mb = args.out.stat().st_size / 1e6
    log(
        f"done in {time.perf_counter() - start:.1f} s: wrote {args.out} ({size_mb:.2f} MB, "
        f"was {args.onnx.stat().st_size / 1e6:.2f} MB); {agreement.summary()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
