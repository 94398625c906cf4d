"""Holdout metrics of a binary classifier, and the ceiling the hidden truth allows."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "MAX_CURVE_POINTS", "METRIC_NAMES", "best_achievable_auc", "curves", "holdout_metrics",
    "roc_auc",
]

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")

#: Curves are thinned to at most this many points: enough to draw, small enough to store.
MAX_CURVE_POINTS = 200

# Probabilities are clipped before log loss so one confident miss gives a large, finite loss.
_EPS = 1e-15


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC; 0.5 when only one class is present (no ranking to judge)."""
    truth = np.asarray(y_true).astype(bool)
    if truth.all() or not truth.any():
        return 0.5
    return float(roc_auc_score(truth, np.asarray(y_score, dtype=np.float64)))


def holdout_metrics(
    y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (label = score >= threshold), ROC AUC and log loss.

    Precision/recall/F1 are 0 where undefined; every value is finite. Raises ``ValueError``
    on an empty or mismatched holdout.
    """
    truth = np.asarray(y_true).astype(bool)
    score = np.asarray(y_score, dtype=np.float64)
    if truth.shape != score.shape or truth.ndim != 1:
        raise ValueError(f"y_true {truth.shape} and y_score {score.shape} must be equal 1-d shapes")
    if truth.size == 0:
        raise ValueError("no holdout rows to score")
    predicted = score >= threshold
    clipped = np.clip(score, _EPS, 1.0 - _EPS)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "precision": float(precision_score(truth, predicted, zero_division=0)),
        "recall": float(recall_score(truth, predicted, zero_division=0)),
        "f1": float(f1_score(truth, predicted, zero_division=0)),
        "roc_auc": roc_auc(truth, score),
        "log_loss": float(log_loss(truth, clipped, labels=[False, True])),
    }


def best_achievable_auc(y_true: np.ndarray, true_probability: np.ndarray) -> float:
    """The AUC of the true outcome probabilities: what a perfect model would score here."""
    return roc_auc(y_true, true_probability)


def _thin(n: int, limit: int) -> np.ndarray:
    """At most ``limit`` evenly spread indices of ``range(n)``, first and last kept."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, limit)).astype(np.int64))


def curves(y_true: np.ndarray, y_score: np.ndarray,
           max_points: int = MAX_CURVE_POINTS) -> dict[str, dict[str, list[float]]]:
    """The holdout ROC curve (``fpr``, ``tpr``, ``thresholds``) and precision-recall curve
    (``precision``, ``recall``), each thinned to at most ``max_points`` points.

    Every value is finite: the ROC curve's first threshold (scikit-learn's +inf, "nothing
    predicted positive") is written as the highest score plus one. With one class only
    there is no curve and the lists are empty.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    truth = np.asarray(y_true).astype(bool)
    score = np.asarray(y_score, dtype=np.float64)
    if truth.shape != score.shape or truth.ndim != 1:
        raise ValueError(f"y_true {truth.shape} and y_score {score.shape} must be equal 1-d shapes")
    if truth.all() or not truth.any():
        return {"roc": {"fpr": [], "tpr": [], "thresholds": []},
                "pr": {"precision": [], "recall": []}}
    fpr, tpr, thresholds = roc_curve(truth, score)
    thresholds = np.where(np.isfinite(thresholds), thresholds, float(score.max()) + 1.0)
    roc_keep = _thin(fpr.size, max_points)
    precision, recall, _ = precision_recall_curve(truth, score)
    pr_keep = _thin(precision.size, max_points)
    return {
        "roc": {"fpr": fpr[roc_keep].tolist(), "tpr": tpr[roc_keep].tolist(),
                "thresholds": thresholds[roc_keep].tolist()},
        "pr": {"precision": precision[pr_keep].tolist(), "recall": recall[pr_keep].tolist()},
    }
