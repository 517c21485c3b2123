"""The tie-aware agreement gate (export/agreement.py) on constructed near ties, and in each export check."""

from __future__ import annotations

import numpy as np
import pytest

from export.agreement import FP16_GATE, ONNX_GATE, Agreement, Gate, compare
from export.onnx import VerificationError, verify_onnx

from .export_helpers import TiedScores, tied_onnx

SHAPE = (1, 4, 5)


def scores_with_tie(gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference scores [1, 3, 4, 5]: class 0 on top everywhere, class 1 ``gap`` below, class 2 far below."""
    scores = np.zeros((1, 3, 4, 5), np.float32)
    scores[:, 0] = 10.0
    scores[:, 1] = 10.0 - gap
    scores[:, 2] = -5.0
    return scores, scores.argmax(1).astype(np.uint8)


def test_near_tie_and_real_disagreements_are_told_apart() -> None:
    scores, labels = scores_with_tie(gap=5e-4)  # below 1e-4 + 1e-4 * 10: a near tie at ONNX_GATE
    candidate = labels.copy()
    candidate[0, 0, 0] = 1  # the near-tied class
    candidate[0, 1, 1] = 2  # a class 15 below the top
    result = compare(scores, labels, candidate, ONNX_GATE)
    assert (result.pixels, result.equal, result.near_ties, result.real) == (20, 18, 1, 1)
    assert result.worst_real_margin == pytest.approx(15.0)
    assert not result.passes(ONNX_GATE)
    assert "1 near-tie and 1 real disagreements" in result.summary()
    near_only = labels.copy()
    near_only[0, 0, 0] = 1
    assert compare(scores, labels, near_only, ONNX_GATE).passes(ONNX_GATE)


def test_the_tolerance_is_absolute_plus_relative_to_the_top_score() -> None:
    gate = Gate(atol=1e-3, rtol=1e-2)
    for gap, near in [(0.1, True), (0.101, True), (0.2, False)]:  # tolerance 1e-3 + 1e-2 * 10 = 0.101
        scores, labels = scores_with_tie(gap)
        candidate = labels.copy()
        candidate[0, 2, 3] = 1
        result = compare(scores, labels, candidate, gate)
        assert (result.near_ties, result.real) == ((1, 0) if near else (0, 1)), gap


def test_max_real_share_and_unusable_comparisons() -> None:
    scores, labels = scores_with_tie(gap=3.0)
    candidate = labels.copy()
    candidate[0, 0, 0] = 1  # 1 real disagreement in 20 pixels = 5%
    assert compare(scores, labels, candidate, Gate(0, 0, max_real=0.05)).passes(Gate(0, 0, max_real=0.05))
    assert not compare(scores, labels, candidate, FP16_GATE).passes(FP16_GATE)  # 0.5% allowed
    candidate[0, 0, 1] = 7  # not one of the reference's classes: real whatever the tolerance
    assert compare(scores, labels, candidate, Gate(1e9, 1e9)).real == 1
    assert compare(None, labels, candidate, Gate(1e9, 1e9)).real == 2  # no scores: every difference is real
    wrong = compare(scores, labels, candidate[:, :3], ONNX_GATE)
    assert wrong.problems and not wrong.passes(ONNX_GATE) and wrong.share == 0.0
    pooled = Agreement(10, 10).add(Agreement(20, 18, 1, 1, 2.5))
    assert (pooled.pixels, pooled.equal, pooled.near_ties, pooled.real, pooled.worst_real_margin) == (
        30, 28, 1, 1, 2.5,
    )  # fmt: skip


def test_onnx_verification_passes_a_constructed_near_tie_and_fails_a_real_flip() -> None:
    """The reference scores class 1 5e-5 below class 0 at every pixel; an ONNX graph that scores it 5e-5
    above flips every label, and each flip is a near tie: the export is accepted and the ties counted.
    A graph that lifts class 2 above class 0 (a margin of 1) is refused."""
    reference = TiedScores(gap=5e-5)
    checks = verify_onnx(tied_onnx([0.0, 5e-5, -1.0]), reference, [(1, 12, 10), (2, 7, 9)])
    assert [c.agreement for c in checks] == [0.0, 0.0]  # every label differs ...
    assert [c.labels.near_ties for c in checks] == [120, 126] and all(c.labels.real == 0 for c in checks)
    with pytest.raises(VerificationError, match="126 real disagreements"):
        verify_onnx(tied_onnx([0.0, -5e-5, 1.0]), reference, [(1, 12, 10), (2, 7, 9)])


def test_fp16_check_counts_near_ties_apart() -> None:
    from export.fp16 import label_agreement

    images = [np.random.default_rng(s).integers(0, 256, (6, 8, 3), dtype=np.uint8) for s in range(3)]
    reference = tied_onnx([0.0, -5e-5, -1.0])
    agreement, _ = label_agreement(reference, tied_onnx([0.0, 5e-5, -1.0]), images)
    assert (agreement.pixels, agreement.near_ties, agreement.real) == (144, 144, 0)
    assert agreement.passes(FP16_GATE)
    flipped, _ = label_agreement(reference, tied_onnx([0.0, -5e-5, 1.0]), images)
    assert flipped.real == 144 and not flipped.passes(FP16_GATE)


def test_engine_check_counts_near_ties_apart(tmp_path, monkeypatch) -> None:
    import onnx
    import onnxruntime

    from common.geometry import Profile
    from engine import runtime
    from export.build_engine import verify

    class OnnxAsEngine:
        """Stands in for TensorRTRunner: the "engine" is an ONNX graph run by ONNX Runtime."""

        def __init__(self, plan) -> None:
            self.session = onnxruntime.InferenceSession(str(plan))

        def run(self, images: np.ndarray) -> np.ndarray:
            return self.session.run(["labels"], {"image": images})[0]

        def close(self) -> None:
            pass

    monkeypatch.setattr(runtime, "TensorRTRunner", OnnxAsEngine)
    paths = {}
    for name, offsets in [
        ("reference", [0.0, -5e-5, -1.0]),
        ("tie", [0.0, 5e-5, -1.0]),
        ("real", [0, 0, 1.0]),
    ]:
        paths[name] = tmp_path / f"{name}.onnx"
        onnx.save(tied_onnx(offsets), str(paths[name]))
    images = [np.full((40, 40, 3), v, np.uint8) for v in (10, 200)]
    profile = Profile(1, 1, 1, 26, 40, 64)
    tie = verify(paths["tie"], paths["reference"], images, profile, FP16_GATE)
    assert (tie.near_ties, tie.real) == (3200, 0) and tie.passes(FP16_GATE)
    real = verify(paths["real"], paths["reference"], images, profile, FP16_GATE)
    assert real.real == 3200 and not real.passes(FP16_GATE)
