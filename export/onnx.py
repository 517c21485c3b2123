"""Checkpoint → ONNX of the deployable graph, verified against PyTorch on several input sizes.

    python -m export.onnx --checkpoint models/demo/fcn8s-demo.safetensors --out model.onnx [--scores]

The graph takes ``image`` uint8 ``[N, H, W, 3]`` RGB (N, H, W dynamic) and returns ``labels`` uint8
``[N, H, W]`` (and ``scores`` float ``[N, C, H, W]`` with ``--scores``). The file is only written after
ONNX Runtime agrees with PyTorch on every label of every check size (square, portrait, landscape, odd,
a batch of 3, none of them the trace size), so an exporter that froze the crop offsets or sizes at the
trace size fails here instead of in production, and after the TensorRT graph lint (:mod:`export.trtlint`)
passed, so a graph TensorRT's parser would reject fails here too. Agreement is tie-aware
(:mod:`export.agreement`): a label that differs only where PyTorch's two best classes are within rounding
of each other is a near tie, reported but not a failure; any other differing label fails the export.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from common.contract import (
    INPUT_NAME,
    LABELS_NAME,
    PROP_METADATA,
    PROP_PRECISION,
    PROP_SHA256,
    SCORES_NAME,
)
from common.digest import file_sha256
from common.metadata import ModelMetadata
from common.onnxrt import create_session
from export.agreement import ONNX_GATE, Agreement, Gate, compare, with_scores_output
from export.graph import DeployableFCN, deployable_graph
from export.images import synthetic_batch
from export.passes import fold_pool_padding, labels_via_float, shapes_from_cast
from export.trtlint import check as check_tensorrt_graph
from training.model import FCNBase
from training.weights import CheckpointError, load_checkpoint

MIN_OPSET = 18
TRACE_SHAPE = (2, 64, 96)
"""(N, H, W) of the example input the exporter traces with; deliberately not one of the check sizes."""
CHECK_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1, 256, 256),  # square
    (1, 320, 224),  # portrait
    (1, 224, 320),  # landscape
    (1, 333, 517),  # odd sizes
    (3, 160, 200),  # a batch of 3
)
"""(N, H, W) of the verification inputs."""


class VerificationError(RuntimeError):
    """The exported graph disagrees with the PyTorch reference."""


@dataclass(frozen=True)
class SizeCheck:
    """ONNX Runtime vs PyTorch on one input shape."""

    shape: tuple[int, int, int]
    labels: Agreement
    """Equal labels, near ties and real disagreements (a problem when the output shape is wrong)."""
    max_abs_score_diff: float
    """max |Δscore| over all pixels and classes (inf when the output shape is wrong)."""
    classes_seen: int
    """Distinct labels PyTorch predicted (a check where every pixel is one class proves little)."""

    @property
    def agreement(self) -> float:
        """Share of pixels with equal labels (0 when the output shape is wrong)."""
        return self.labels.share


def log(message: str) -> None:
    """One progress line."""
    print(f"[export] {message}", flush=True)


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"NxHxW"`` → ``(N, H, W)``."""
    try:
        n, h, w = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxHxW (e.g. 1x333x517), got {text!r}") from None
    if min(n, h, w) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return n, h, w


def trace_to_onnx(graph: DeployableFCN, path: Path, opset: int = MIN_OPSET) -> None:
    """Export with the dynamo exporter, N, H and W symbolic (``torch.export.Dim``), weights in the file."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below the minimum {MIN_OPSET}")
    n, h, w = TRACE_SHAPE
    example = torch.zeros((n, h, w, 3), dtype=torch.uint8)
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("height", min=1)}
    dims[2] = torch.export.Dim("width", min=1)
    outputs = [LABELS_NAME, SCORES_NAME] if graph.scores else [LABELS_NAME]
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(
        logging.ERROR
    )  # "no torchvision"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch-internal
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes={INPUT_NAME: dims},
            opset_version=opset,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))


def set_properties(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Set (replace) ``metadata_props`` entries."""
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def read_properties(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def name_output_dims(model: onnx.ModelProto) -> None:
    """Give the outputs the input's dim names (the exporter writes sympy expressions that equal them)."""
    batch, height, width = (d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[:3])
    names = {LABELS_NAME: (batch, height, width), SCORES_NAME: (batch, None, height, width)}
    for output in model.graph.output:
        for dim, name in zip(output.type.tensor_type.shape.dim, names[output.name], strict=True):
            if name is not None:
                dim.dim_param = name


def check_size(
    session: ort.InferenceSession, reference: DeployableFCN, images: np.ndarray, gate: Gate = ONNX_GATE
) -> SizeCheck:
    """Run one batch through ONNX Runtime (labels + scores) and the PyTorch reference; compare."""
    shape = (images.shape[0], images.shape[1], images.shape[2])
    with torch.no_grad():
        ref_labels, ref_scores = (t.numpy() for t in reference(torch.from_numpy(images)))
    labels, scores = session.run(None, {INPUT_NAME: images})[:2]
    classes = len(np.unique(ref_labels))
    agreement = compare(ref_scores, ref_labels, labels, gate)
    if agreement.problems or scores.shape != ref_scores.shape:
        problem = (
            f"output {list(labels.shape)} / scores {list(scores.shape)}, expected {list(ref_labels.shape)}"
        )
        return SizeCheck(shape, Agreement(agreement.pixels, problems=(problem,)), float("inf"), classes)
    diff = float(np.max(np.abs(scores.astype(np.float32) - ref_scores)))
    return SizeCheck(shape, agreement, diff, classes)


def verify_onnx(
    model: onnx.ModelProto,
    reference: DeployableFCN,
    shapes: Sequence[tuple[int, int, int]] = CHECK_SHAPES,
    seed: int = 0,
    gate: Gate = ONNX_GATE,
) -> list[SizeCheck]:
    """Compare ONNX Runtime with the PyTorch reference (built with ``scores=True``) on synthetic scenes.

    Raises :class:`VerificationError` unless every shape passes ``gate`` (by default: no real
    disagreement; near ties are reported).
    """
    if not reference.scores:
        raise ValueError("the reference graph must return scores (deployable_graph(..., scores=True))")
    session = create_session(with_scores_output(model))
    checks = []
    for n, h, w in shapes:
        check = check_size(
            session, reference, synthetic_batch(n, max(h, 8), max(w, 8), seed)[:, :h, :w].copy(), gate
        )
        checks.append(check)
        log(
            f"  {n}x{h}x{w}: {check.labels.summary()}; max |Δscore| {check.max_abs_score_diff:.3g}, "
            f"{check.classes_seen} classes"
        )
    failed = [c for c in checks if not c.labels.passes(gate)]
    if failed:
        details = "; ".join(f"{'x'.join(map(str, c.shape))}: {c.labels.summary()}" for c in failed)
        raise VerificationError(f"ONNX Runtime disagrees with PyTorch ({gate.describe()}): {details}")
    return checks


def export_onnx(
    model: FCNBase,
    metadata: ModelMetadata,
    out: Path,
    *,
    source_sha256: str,
    scores: bool = False,
    opset: int = MIN_OPSET,
    shapes: Sequence[tuple[int, int, int]] = CHECK_SHAPES,
    group_upsampling: bool = True,
    gate: Gate = ONNX_GATE,
) -> list[SizeCheck]:
    """Export, check (``onnx.checker`` full check), verify on ``shapes`` and only then write ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    metadata = replace(metadata, geometry=model.geometry())
    graph = deployable_graph(model, metadata, scores=scores, group_upsampling=group_upsampling)
    classes = metadata.num_classes
    log(f"tracing {metadata.architecture} (width {metadata.width}, {classes} classes), opset {opset}")
    start = time.perf_counter()
    try:
        trace_to_onnx(graph, partial, opset)
        proto = onnx.load(str(partial))
    finally:
        partial.unlink(missing_ok=True)
    folded = fold_pool_padding(proto)
    moved, relabelled = shapes_from_cast(proto), labels_via_float(proto)
    nodes = len(proto.graph.node)
    log(f"traced in {time.perf_counter() - start:.1f} s; {nodes} nodes ({folded} pads folded into pools)")
    log(f"for TensorRT: {moved} Shape nodes read the input's Cast, {relabelled} uint8 outputs cast via FLOAT")
    name_output_dims(proto)
    set_properties(
        proto,
        {PROP_METADATA: metadata.to_json(), PROP_SHA256: source_sha256, PROP_PRECISION: "fp32"},
    )
    onnx.checker.check_model(proto, full_check=True)
    check_tensorrt_graph(proto)
    log("onnx.checker (full check) and the TensorRT graph lint (export/trtlint.py) passed")
    log(f"verifying ONNX Runtime against PyTorch on {len(shapes)} input shapes (trace shape {TRACE_SHAPE})")
    reference = deployable_graph(model, metadata, scores=True, friendly=False)
    checks = verify_onnx(proto, reference, shapes, gate=gate)
    onnx.save(proto, str(out))
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help=".safetensors or pytorch-fcn .pth file"
    )
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--architecture", help="for .pth files whose architecture the keys do not tell")
    parser.add_argument("--scores", action="store_true", help="also output float scores [N, C, H, W]")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument(
        "--dense-upsampling",
        action="store_true",
        help="keep per-class (diagonal) upsamplers dense instead of grouped (only to measure the difference)",
    )
    parser.add_argument(
        "--check-shapes", type=parse_shape, nargs="+", default=list(CHECK_SHAPES), metavar="NxHxW",
        help="verification input shapes (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--tie-atol",
        type=float,
        default=ONNX_GATE.atol,
        help="near-tie score tolerance, absolute (%(default)s)",
    )
    parser.add_argument(
        "--tie-rtol",
        type=float,
        default=ONNX_GATE.rtol,
        help="near-tie tolerance per unit of the top score (%(default)s)",
    )
    args = parser.parse_args(argv)
    if args.opset < MIN_OPSET:
        parser.error(f"--opset must be at least {MIN_OPSET}")
    start = time.perf_counter()
    try:
        log(f"loading {args.checkpoint}")
        model, metadata = load_checkpoint(args.checkpoint, args.architecture)
        checks = export_onnx(
            model, metadata, args.out, source_sha256=file_sha256(args.checkpoint), scores=args.scores,
            opset=args.opset, shapes=args.check_shapes, gate=Gate(args.tie_atol, args.tie_rtol),
            group_upsampling=not args.dense_upsampling,
        )  # fmt: skip
    except (VerificationError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    pooled = Agreement()
    for check in checks:
        pooled = pooled.add(check.labels)
    max_diff = max(c.max_abs_score_diff for c in checks)
    size_mb = args.out.stat().st_size / 1e6
    log(
        f"done in {time.perf_counter() - start:.1f} s: wrote {args.out} ({size_mb:.2f} MB); "
        f"{len(checks)} shapes: {pooled.summary()}, max |Δscore| {max_diff:.3g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
