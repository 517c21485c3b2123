"""Metrics against hand-computed confusion matrices, with the reference's NaN rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import ConfusionMeter, confusion_matrix, scores


def test_confusion_matrix_counts_rows_gt_columns_prediction_and_drops_void() -> None:
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert np.array_equal(confusion_matrix(gt, pred, 3), expected)


def test_four_metrics_on_a_hand_computed_matrix() -> None:
    # rows: ground truth 0, 1, 2; columns: prediction
    hist = np.array([[5, 1, 0], [2, 3, 0], [0, 1, 4]])
    result = scores(hist)
    assert result.pixel_accuracy == pytest.approx(12 / 16)
    assert result.class_accuracy == pytest.approx((5 / 6, 3 / 5, 4 / 5))
    assert result.mean_accuracy == pytest.approx((5 / 6 + 3 / 5 + 4 / 5) / 3)
    # IU_i = n_ii / (t_i + predicted_i - n_ii): predicted = (7, 5, 4)
    ius = (5 / (6 + 7 - 5), 3 / (5 + 5 - 3), 4 / (5 + 4 - 4))
    assert result.class_iu == pytest.approx(ius)
    assert result.mean_iu == pytest.approx(sum(ius) / 3)
    assert result.frequency_weighted_iu == pytest.approx((6 * ius[0] + 5 * ius[1] + 5 * ius[2]) / 16)


def test_class_absent_from_ground_truth_and_never_predicted_is_left_out() -> None:
    hist = np.array([[3, 1, 0], [1, 5, 0], [0, 0, 0]])
    result = scores(hist)
    assert math.isnan(result.class_iu[2]) and math.isnan(result.class_accuracy[2])
    assert result.mean_iu == pytest.approx((3 / 5 + 5 / 7) / 2)
    assert result.mean_accuracy == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert result.frequency_weighted_iu == pytest.approx((4 * 3 / 5 + 6 * 5 / 7) / 10)


def test_class_predicted_but_absent_from_ground_truth_counts_zero_in_mean_iu_only() -> None:
    hist = np.array([[3, 0, 1], [0, 4, 0], [0, 0, 0]])
    result = scores(hist)
    assert result.class_iu[2] == 0.0
    assert math.isnan(result.class_accuracy[2])
    assert result.mean_iu == pytest.approx((3 / 4 + 1 + 0) / 3)
    assert result.mean_accuracy == pytest.approx((3 / 4 + 1) / 2)
    assert result.frequency_weighted_iu == pytest.approx((4 * 3 / 4 + 4 * 1) / 8)


def test_meter_accumulates_one_matrix_over_images() -> None:
    meter = ConfusionMeter(2)
    meter.update(np.array([0, 1]), np.array([0, 0]))
    meter.update(np.array([[1, 1]]), np.array([[1, 1]]))
    assert np.array_equal(meter.hist, [[1, 0], [1, 2]])
    # per-image averaging would give a different mean IU: one matrix over the split is the rule
    assert meter.scores().mean_iu == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix(np.zeros(3), np.full(3, 5), 2)
    with pytest.raises(ValueError, match="empty"):
        scores(np.zeros((2, 2)))
