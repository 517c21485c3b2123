"""Tie-aware label agreement: the one gate of every export check (ONNX vs PyTorch, FP16 vs FP32, engine
vs ONNX Runtime FP32).

Where the reference's two best classes score almost the same, either label is right and rounding decides
which one a runtime picks, so a label that differs there is not an error. A pixel whose candidate label
differs from the reference label is a **near tie** when the reference scores its own label at most
``tolerance`` above the candidate's label (for a swap of the top two classes: the reference's top-two
margin), where ``tolerance = atol + rtol * |reference top score|``; otherwise it is a **real
disagreement**. A check passes when real disagreements are at most ``max_real`` of the pixels (0 for
ONNX vs PyTorch: any real disagreement fails) and every output has the reference's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.contract import LABELS_NAME, SCORES_NAME

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort


@dataclass(frozen=True)
class Gate:
    """When a candidate's labels are close enough to the reference's."""

    atol: float
    """Absolute score tolerance of a near tie."""
    rtol: float
    """Tolerance relative to the reference's top score at the pixel."""
    max_real: float = 0.0
    """Share of pixels that may disagree for real (beyond the tolerance)."""

    def describe(self) -> str:
        real = (
            "no real disagreement" if self.max_real == 0 else f"real disagreements ≤ {100 * self.max_real:g}%"
        )
        return f"{real}; near tie: margin ≤ {self.atol:g} + {self.rtol:g}·|top score|"


ONNX_GATE = Gate(atol=1e-4, rtol=1e-4)
"""ONNX Runtime vs PyTorch, both FP32: kernels differ only in summation order (observed |Δscore| ~2e-4)."""
FP16_GATE = Gate(atol=1e-3, rtol=1e-2, max_real=0.005)
"""FP16 (graph or engine) vs FP32: FP16 keeps 11 significant bits, and a score sums many rounded terms."""


@dataclass
class Agreement:
    """Candidate vs reference labels, pooled over any number of comparisons."""

    pixels: int = 0
    equal: int = 0
    near_ties: int = 0
    real: int = 0
    worst_real_margin: float = 0.0
    """The reference's largest score margin among the real disagreements (0 when none)."""
    problems: tuple[str, ...] = ()
    """Comparisons that could not be made (outputs of the wrong shape)."""

    @property
    def share(self) -> float:
        """Pixels with equal labels (0 with a problem)."""
        return self.equal / self.pixels if self.pixels and not self.problems else 0.0

    @property
    def real_share(self) -> float:
        return self.real / self.pixels if self.pixels else 0.0

    def passes(self, gate: Gate) -> bool:
        return not self.problems and self.pixels > 0 and self.real <= gate.max_real * self.pixels

    def add(self, other: Agreement) -> Agreement:
        """Both pooled."""
        return Agreement(
            self.pixels + other.pixels,
            self.equal + other.equal,
            self.near_ties + other.near_ties,
            self.real + other.real,
            max(self.worst_real_margin, other.worst_real_margin),
            self.problems + other.problems,
        )

    def summary(self) -> str:
        """One line: equal share, near ties and real disagreements, each counted."""
        if self.problems:
            return "; ".join(self.problems)
        text = f"{100 * self.share:.4f}% equal, {self.near_ties} near-tie and {self.real} real disagreements"
        return text + (f" (largest real margin {self.worst_real_margin:.3g})" if self.real else "")


def compare(
    reference_scores: np.ndarray | None,
    reference_labels: np.ndarray,
    candidate_labels: np.ndarray,
    gate: Gate,
) -> Agreement:
    """Classify every pixel of ``candidate_labels`` [N, H, W] against the reference's labels [N, H, W] and
    class scores [N, C, H, W]: equal, near tie or real disagreement (a label outside the reference's
    classes is real; without scores every differing label is real)."""
    expected = reference_labels.shape
    if candidate_labels.shape != expected or (
        reference_scores is not None and (reference_scores.shape[0], *reference_scores.shape[2:]) != expected
    ):
        shapes = f"labels {list(candidate_labels.shape)}, expected {list(expected)}"
        return Agreement(pixels=int(np.prod(expected)), problems=(shapes,))
    differ = candidate_labels != reference_labels
    pixels = int(differ.size)
    if not differ.any():
        return Agreement(pixels, pixels)
    n, h, w = np.nonzero(differ)
    margin = np.full(len(n), np.inf)
    top = np.zeros(len(n))
    if reference_scores is not None:
        given = candidate_labels[n, h, w].astype(np.int64)
        known = given < reference_scores.shape[1]
        top = reference_scores[n, reference_labels[n, h, w].astype(np.int64), h, w].astype(np.float64)
        margin[known] = top[known] - reference_scores[n[known], given[known], h[known], w[known]]
    near = margin <= gate.atol + gate.rtol * np.abs(top)
    real = int((~near).sum())
    worst = float(margin[~near].max()) if real else 0.0
    return Agreement(pixels, pixels - len(n), int(near.sum()), real, worst)


def scores_name(model: onnx.ModelProto) -> str:
    """The tensor the graph's one ArgMax reads: the class scores."""
    argmax = [node for node in model.graph.node if node.op_type == "ArgMax"]
    if len(argmax) != 1:
        raise ValueError(f"expected one ArgMax node, found {len(argmax)}")
    return str(argmax[0].input[0])


def with_scores_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose outputs also include the class scores (:func:`scores_name`)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    scores = scores_name(copy)
    if scores not in {o.name for o in copy.graph.output}:
        inferred = onnx.shape_inference.infer_shapes(copy).graph.value_info
        info = next((v for v in inferred if v.name == scores), None)
        if info is None:
            raise ValueError(f"cannot infer the type of the ArgMax input {scores!r}")
        copy.graph.output.append(info)
    return copy


def reference_session(path: Path) -> tuple[ort.InferenceSession, list[str]]:
    """An ONNX Runtime session of an FP32 reference file and the outputs to ask for: labels and, when
    the file has a ``scores`` output or the onnx package is there to add one, the class scores (the GPU
    image has no onnx package: then only labels, and every differing label counts as real)."""
    from common.onnxrt import create_session

    session = create_session(path)
    if SCORES_NAME in {o.name for o in session.get_outputs()}:
        return session, [LABELS_NAME, SCORES_NAME]
    try:
        import onnx
    except ImportError:
        return session, [LABELS_NAME]
    model = onnx.load(str(path))
    return create_session(with_scores_output(model)), [LABELS_NAME, scores_name(model)]
