"""From a job and a training set to a fitted scikit-learn pipeline and its holdout metrics."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from config.job import JobConfiguration, ModelType
from learning.training.metrics import holdout_metrics
from learning.training.sets import TrainingSet

__all__ = [
    "Fit",
    "TrainedModel",
    "TrainingError",
    "build_pipeline",
    "fit_locally",
    "split_by_location",
    "train",
]

#: The fit step ``train`` delegates to: (X, y, feature names, job) -> a fitted pipeline.
#: The split, the holdout and the metrics stay in ``train``: whoever fits never grades.
Fit = Callable[[np.ndarray, np.ndarray, tuple[str, ...], JobConfiguration], Pipeline]


class TrainingError(ValueError):
    """The training set cannot give a meaningful model (too few rows or a single class)."""


@dataclass(frozen=True, slots=True, eq=False)
class TrainedModel:
    """A fitted pipeline, its holdout metrics and the holdout predictions (for curves)."""

    pipeline: Pipeline
    metrics: tuple[tuple[str, float], ...]
    n_train: int
    n_test: int
    y_true: np.ndarray  # bool, the holdout labels
    y_score: np.ndarray  # float64, P(True) on the holdout
    feature_names: tuple[str, ...]
    collection_id: int
    job: JobConfiguration
    split: str  # "location" or "row": how the holdout was chosen
    train_mask: np.ndarray  # bool, over the training set's rows: the part fitted on
    test_mask: np.ndarray  # bool: the holdout

    def metric(self, name: str) -> float:
        """One holdout metric by name (``roc_auc``)."""
        return dict(self.metrics)[name]


_ESTIMATORS: dict[ModelType, type[ClassifierMixin]] = {
    ModelType.DECISION_TREE: DecisionTreeClassifier,
    ModelType.RANDOM_FOREST: RandomForestClassifier,
    ModelType.LOGISTIC_REGRESSION: LogisticRegression,
    ModelType.GRADIENT_BOOSTING: GradientBoostingClassifier,
}


def build_pipeline(job: JobConfiguration) -> Pipeline:
    """Median imputation, scaling for logistic regression, then the job's estimator.

    ``keep_empty_features`` keeps a column that is all NaN in training (imputed as 0),
    so the pipeline always takes the collection's full feature vector.
    """
    # The job's hyperparameter names are scikit-learn's own (config.job checks them).
    estimator = _ESTIMATORS[job.model_type](**job.params, random_state=job.seed)
    steps: list[tuple[str, object]] = [
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True))
    ]
    if job.model_type is ModelType.LOGISTIC_REGRESSION:
        steps.append(("scale", StandardScaler()))
    steps.append(("model", estimator))
    return Pipeline(steps)


def fit_locally(X: np.ndarray, y: np.ndarray, feature_names: tuple[str, ...],
                job: JobConfiguration) -> Pipeline:
    """The default fit step: the job's pipeline fitted in this process."""
    return build_pipeline(job).fit(X, y)


def _location_unit(location_id: int, seed: int) -> float:
    """A stable number in [0, 1) for a location and seed (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{seed}:{location_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _has_both_classes(labels: np.ndarray, mask: np.ndarray) -> bool:
    part = labels[mask]
    return bool(part.any()) and not bool(part.all())


def split_by_location(
    location_ids: np.ndarray,
    seed: int,
    test_fraction: float,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train_mask, test_mask): a location is in the test part iff its hash is below
    ``test_fraction``, so a location never straddles the parts and, for a given seed, stays
    on the same side as data grows (a later model is never tested on a location an earlier
    one trained on).

    Fallback, only when that leaves a part empty or (given ``labels``) without both
    classes: a seeded row split of ``ceil(test_fraction * n)`` rows (``TrainedModel.split``
    records which one a model got).
    """
    masks, _ = _split(np.asarray(location_ids), seed, test_fraction, labels)
    return masks


def _split(
    location_ids: np.ndarray, seed: int, test_fraction: float, labels: np.ndarray | None
) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    unique, inverse = np.unique(location_ids, return_inverse=True)
    in_test = np.array(
        [_location_unit(int(loc), seed) < test_fraction for loc in unique], dtype=bool
    )
    test = in_test[inverse] if len(unique) else np.zeros(0, dtype=bool)
    train = ~test
    if (
        train.any()
        and test.any()
        and (
            labels is None or (_has_both_classes(labels, train) and _has_both_classes(labels, test))
        )
    ):
        return (train, test), "location"
    n = len(location_ids)
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, math.ceil(test_fraction * n))) if n > 1 else 0
    test = np.zeros(n, dtype=bool)
    test[order[:n_test]] = True
    return (~test, test), "row"


def train(training_set: TrainingSet, job: JobConfiguration,
          fit: Fit = fit_locally) -> TrainedModel:
    """Fit the job's pipeline on the training part (with ``fit``) and score it on the holdout.

    Deterministic: the same facts and job give the same split, model and metrics.
    Raises ``TrainingError`` with fewer than 4 rows or a single class; whatever ``fit``
    raises passes through.
    """
    X, y = training_set.X, training_set.y.astype(bool)
    if len(y) < 4 or y.all() or not y.any():
        raise TrainingError(
            f"need at least 4 outcomes of both classes, have {len(y)} ({int(y.sum())} true)"
        )
    (train_mask, test_mask), kind = _split(
        training_set.location_ids, job.seed, job.test_fraction, y
    )
    pipeline = fit(X[train_mask], y[train_mask], training_set.feature_names, job)
    true_column = list(pipeline.classes_).index(True)
    y_score = pipeline.predict_proba(X[test_mask])[:, true_column]
    y_true = y[test_mask]
    metrics = holdout_metrics(y_true, y_score)
    for array in (y_true, y_score, train_mask, test_mask):
        array.setflags(write=False)
    return TrainedModel(
        pipeline=pipeline,
        metrics=tuple(sorted(metrics.items())),
        n_train=int(train_mask.sum()),
        n_test=int(test_mask.sum()),
        y_true=y_true,
        y_score=y_score,
        feature_names=training_set.feature_names,
        collection_id=training_set.collection_id,
        job=job,
        split=kind,
        train_mask=train_mask,
        test_mask=test_mask,
    )
