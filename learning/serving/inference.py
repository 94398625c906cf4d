"""Serving snapshots: a fitted pipeline frozen for the predictor's hot path.

``Pipeline.predict_proba`` validates its input on every call (~60-75 us for one row).
For the pipelines we build, the same answer is cheap to compute by hand: the imputer's
medians fill NaN, then a decision tree is walked in pure Python (~1-2 us), a random forest
or gradient boosting level by level over all its trees at once with numpy, and logistic
regression is a dot product. Trees compare float32 inputs with float64 thresholds, exactly
as scikit-learn does, so the fast path gives scikit-learn's probabilities (see tests). Any
other pipeline goes through ``predict_proba``.

The walks are ``learning.serving.compiled``'s (numpy only): ``ServingModel.compiled`` is what the
registry keeps for predictors, which do not import scikit-learn. This module builds them
from the fitted estimators.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from learning.serving.compiled import (
    CompiledFormError,
    CompiledModel,
    EnsembleWalk,
    LinearWalk,
    TreeWalk,
    Walk,
)

__all__ = ["ServingModel", "checked_compiled_form"]


def _true_column(classes: np.ndarray) -> int:
    return [bool(c) for c in classes].index(True)


def _tree_walk(tree: Any, node_values: np.ndarray) -> TreeWalk:
    """scikit-learn's fitted ``Tree`` as flat lists, with ``node_values`` per node."""
    return TreeWalk(left=tree.children_left.tolist(), right=tree.children_right.tolist(),
                    feature=tree.feature.tolist(), threshold=tree.threshold.tolist(),
                    value=node_values.tolist())


def _true_fractions(estimator: DecisionTreeClassifier) -> np.ndarray:
    """A classification tree's node values as P(True) (class fractions, normalised)."""
    value = estimator.tree_.value[:, 0, :]
    return np.asarray(value[:, _true_column(estimator.classes_)] / value.sum(axis=1))


def _ensemble_walk(trees: Sequence[tuple[Any, np.ndarray]], offset: float,
                   logistic: bool) -> EnsembleWalk:
    """Fitted trees (each with its node values) in one node table, walked level by level:
    a leaf points at itself with an infinite threshold, so every step from it stays."""
    children, feature, threshold, values, roots = [], [], [], [], []
    start = depth = 0
    for tree, node_values in trees:
        n = int(tree.node_count)
        left = np.asarray(tree.children_left)
        is_leaf = left == -1
        own = np.arange(start, start + n)
        right = np.where(is_leaf, own, np.asarray(tree.children_right) + start)
        children.append(np.stack((right, np.where(is_leaf, own, left + start)), axis=1))
        feature.append(np.where(is_leaf, 0, np.asarray(tree.feature)))
        threshold.append(np.where(is_leaf, np.inf, np.asarray(tree.threshold)))
        values.append(node_values)
        roots.append(start)
        start += n
        depth = max(depth, int(tree.max_depth))
    return EnsembleWalk(
        children=np.concatenate(children).astype(np.int64),
        feature=np.concatenate(feature).astype(np.int64),
        threshold=np.concatenate(threshold).astype(np.float64),
        value=np.concatenate(values).astype(np.float64),
        roots=np.asarray(roots, dtype=np.int64),
        depth=depth,
        offset=float(offset),
        logistic=logistic,
    )


def _forest_walk(forest: RandomForestClassifier) -> EnsembleWalk:
    n = len(forest.estimators_)
    return _ensemble_walk([(e.tree_, _true_fractions(e) / n) for e in forest.estimators_],
                          0.0, logistic=False)


def _boosting_walk(model: GradientBoostingClassifier) -> EnsembleWalk:
    rate = float(model.learning_rate)
    trees = [(e.tree_, rate * e.tree_.value[:, 0, 0]) for e in model.estimators_[:, 0]]
    n_features = int(model.n_features_in_)
    init = float(model._raw_predict_init(np.zeros((1, n_features), dtype=np.float32))[0, 0])
    return _ensemble_walk(trees, init, logistic=True)


def _linear_walk(scaler: StandardScaler, model: LogisticRegression) -> LinearWalk:
    """Logistic regression after standard scaling: sigmoid(w . x + b), folded into one step."""
    sign = 1.0 if _true_column(model.classes_) == 1 else -1.0
    coef, intercept = model.coef_[0] * sign, model.intercept_[0] * sign
    mean = scaler.mean_ if scaler.mean_ is not None else np.zeros_like(coef)
    scale = scaler.scale_ if scaler.scale_ is not None else np.ones_like(coef)
    weights = coef / scale
    return LinearWalk(weights=weights.tolist(), bias=float(intercept - (weights * mean).sum()))


@dataclass(frozen=True, slots=True)
class ServingModel:
    """An immutable model snapshot for predictions: ``predict_one`` gives P(label is True).

    Build it with ``ServingModel.from_pipeline``; ``compiled`` is the fast path as plain
    arrays (what the registry keeps for predictors), None when the pipeline's shape has none.
    """

    version: int
    feature_collection_id: int
    feature_names: tuple[str, ...]
    pipeline: Pipeline = field(repr=False)
    compiled: CompiledModel | None = field(repr=False)
    _true_column: int = field(repr=False)

    @property
    def fast(self) -> bool:
        """Whether the hand-rolled path answers (else ``predict_proba``)."""
        return self.compiled is not None

    @classmethod
    def from_pipeline(
        cls,
        pipeline: Pipeline,
        version: int,
        feature_collection_id: int,
        feature_names: Sequence[str],
    ) -> ServingModel:
        """Freeze a fitted pipeline; picks the fast path when the pipeline's shape allows it."""
        steps = [step for _, step in pipeline.steps]
        names = tuple(feature_names)
        model = steps[-1]
        classes = getattr(model, "classes_", np.array([]))
        binary = len(classes) == 2 and True in [bool(c) for c in classes]
        walk: Walk | None = None
        trees = False  # trees compare float32 inputs
        statistics = np.zeros(len(names))
        imputer = steps[0] if isinstance(steps[0], SimpleImputer) else None
        if imputer is not None and imputer.strategy in ("median", "mean") and binary:
            statistics = np.asarray(imputer.statistics_, dtype=np.float64)
            rest = steps[1:]
            if len(rest) == 1 and isinstance(model, DecisionTreeClassifier):
                walk, trees = _tree_walk(model.tree_, _true_fractions(model)), True
            elif len(rest) == 1 and isinstance(model, RandomForestClassifier):
                walk, trees = _forest_walk(model), True
            elif (
                len(rest) == 1
                and isinstance(model, GradientBoostingClassifier)
                and model.estimators_.shape[1] == 1
                and model.init_ != "zero"
            ):
                walk, trees = _boosting_walk(model), True
            elif (
                len(rest) == 2
                and isinstance(rest[0], StandardScaler)
                and isinstance(model, LogisticRegression)
                and model.coef_.shape[0] == 1
            ):
                walk = _linear_walk(rest[0], model)
        compiled = None
        # A column the imputer dropped (never seen: statistic NaN) shifts the model's
        # inputs: no fast path then.
        if (walk is not None and len(statistics) == len(names) and len(names) > 0
                and np.isfinite(statistics).all()
                and getattr(model, "n_features_in_", len(names)) == len(names)):
            rounded = array("f", statistics.tolist()) if trees else statistics.tolist()
            compiled = CompiledModel(walk, tuple(rounded), trees)
        return cls(
            version=version,
            feature_collection_id=feature_collection_id,
            feature_names=names,
            pipeline=pipeline,
            compiled=compiled,
            _true_column=_true_column(classes) if binary else -1,
        )

    def predict_one(self, values: Sequence[float]) -> float:
        """P(True) for one feature vector in ``feature_names`` order; NaN means missing.

        Raises ``ValueError`` for a wrong length or an infinite value.
        """
        if len(values) != len(self.feature_names):
            raise ValueError(f"expected {len(self.feature_names)} values, got {len(values)}")
        if self.compiled is None:
            return float(self.predict_many(np.asarray([values], dtype=np.float64))[0])
        return self.compiled.predict_one(values)

    def predict_many(self, X: np.ndarray) -> np.ndarray:
        """P(True) for each row of ``X`` (n x features), by ``predict_proba``; NaN means
        missing."""
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.feature_names):
            raise ValueError(f"expected shape (n, {len(self.feature_names)}), got {matrix.shape}")
        if self._true_column < 0:
            raise ValueError("the model was not trained on both classes")
        proba = self.pipeline.predict_proba(matrix)
        return np.asarray(proba[:, self._true_column], dtype=np.float64)


def checked_compiled_form(pipeline: Pipeline, feature_names: Sequence[str],
                          rows: np.ndarray | None = None, atol: float = 1e-9) -> bytes | None:
    """The pipeline's compiled form as predictors will load it, or None: when it has no fast
    path, when its bytes do not decode (``CompiledFormError``, e.g. a tree deeper than a form
    allows), or when the decoded form does not answer ``rows`` as ``predict_proba`` does
    (without rows: 256 seeded random ones, a fifth of their values missing)."""
    if rows is None:
        rng = np.random.default_rng(0)
        rows = rng.normal(scale=10.0, size=(256, len(feature_names)))
        rows[rng.random(rows.shape) < 0.2] = np.nan
    serving = ServingModel.from_pipeline(pipeline, 0, 0, feature_names)
    if serving.compiled is None:
        return None
    data = serving.compiled.to_bytes()
    try:
        decoded = CompiledModel.from_bytes(data)
    except CompiledFormError:
        return None
    matrix = np.asarray(rows, dtype=np.float64)
    if len(matrix):
        proba = pipeline.predict_proba(matrix)[:, serving._true_column]
        answers = np.array([decoded.predict_one(tuple(row)) for row in matrix])
        if not np.allclose(answers, proba, rtol=0.0, atol=atol):
            return None
    return data
