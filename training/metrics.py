"""Segmentation metrics from one confusion matrix over a whole split, with the FCN reference's NaN rules.

Rows are ground truth, columns prediction; pixels whose ground truth is not in ``[0, n)`` (255 = void)
are left out. A class absent from the ground truth is left out of the mean accuracy; it is left out
of the mean IU only if it is never predicted either (otherwise its IU is 0 and counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(ground_truth: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """An ``n x n`` int64 histogram ``hist[g, p]`` of one label map pair (any shapes, equal)."""
    if ground_truth.shape != prediction.shape:
        raise ValueError(
            f"ground truth {ground_truth.shape} and prediction {prediction.shape} differ in shape"
        )
    gt = ground_truth.astype(np.int64).ravel()
    pred = prediction.astype(np.int64).ravel()
    keep = (gt >= 0) & (gt < num_classes)
    if (pred[keep] < 0).any() or (pred[keep] >= num_classes).any():
        raise ValueError(f"predictions must be class indices in [0, {num_classes})")
    counts = np.bincount(num_classes * gt[keep] + pred[keep], minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class Scores:
    """The paper's four metrics (fractions, not percent) and per-class IU / accuracy (NaN where undefined)."""

    pixel_accuracy: float
    mean_accuracy: float
    mean_iu: float
    frequency_weighted_iu: float
    class_iu: tuple[float, ...]
    class_accuracy: tuple[float, ...]

    def summary(self) -> dict[str, float]:
        """The four headline metrics."""
        return {
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "mean_iu": self.mean_iu,
            "frequency_weighted_iu": self.frequency_weighted_iu,
        }


def scores(hist: np.ndarray) -> Scores:
    """The four metrics and per-class values of a confusion matrix (reference ``score.py`` rules)."""
    hist = np.asarray(hist, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {hist.shape}")
    total = hist.sum()
    if total == 0:
        raise ValueError("the confusion matrix is empty: no labelled pixels were scored")
    diagonal = np.diag(hist)
    gt_pixels = hist.sum(axis=1)
    predicted = hist.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_accuracy = diagonal / gt_pixels
        class_iu = diagonal / (gt_pixels + predicted - diagonal)
    frequency = gt_pixels / total
    present = frequency > 0
    return Scores(
        pixel_accuracy=float(diagonal.sum() / total),
        mean_accuracy=float(np.nanmean(class_accuracy)),
        mean_iu=float(np.nanmean(class_iu)),
        frequency_weighted_iu=float((frequency[present] * class_iu[present]).sum()),
        class_iu=tuple(float(v) for v in class_iu),
        class_accuracy=tuple(float(v) for v in class_accuracy),
    )


class ConfusionMeter:
    """Accumulates one confusion matrix over many label maps."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.hist = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, ground_truth: np.ndarray, prediction: np.ndarray) -> None:
        self.hist += confusion_matrix(ground_truth, prediction, self.num_classes)

    def scores(self) -> Scores:
        return scores(self.hist)
