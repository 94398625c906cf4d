"""Serving snapshots: a fitted pipeline frozen for the predictor's hot path.

``Pipeline.predict_proba`` validates its input on every call (~60-75 us for one row).
For the pipelines we build, the same answer is cheap to compute by hand: the imputer's
medians fill NaN, then a decision tree is walked in pure Python (~1-2 us), a random forest
or gradient boosting level by level over all its trees at once with numpy, and logistic
regression is a dot product. Trees compare float32 inputs with float64 thresholds, exactly
as scikit-learn does, so the fast path gives scikit-learn's probabilities (see tests). Any
other pipeline goes through ``predict_proba``.

The one-row walks are ``learning.compiled``'s (numpy only): ``ServingModel.compiled`` is
what the registry keeps for predictors, which never import scikit-learn. This module builds
them from the fitted estimators and answers batches (``predict_many``) with their ``apply``.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from learning.compiled import (
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


@dataclass(frozen=True, slots=True)
class _Tree:
    """One fitted tree: its walk (one row) and sklearn's own Tree (``apply`` on batches)."""

    walk: TreeWalk
    value_array: np.ndarray
    raw: Any  # sklearn's Tree

    @classmethod
    def of(cls, tree: Any, node_values: np.ndarray) -> _Tree:
        walk = TreeWalk(left=tree.children_left.tolist(), right=tree.children_right.tolist(),
                        feature=tree.feature.tolist(), threshold=tree.threshold.tolist(),
                        value=node_values.tolist())
        return cls(walk=walk, value_array=node_values, raw=tree)

    @classmethod
    def classifier(cls, estimator: DecisionTreeClassifier) -> _Tree:
        """A classification tree whose node values are P(True) (class fractions, normalised)."""
        value = estimator.tree_.value[:, 0, :]
        fraction = value[:, _true_column(estimator.classes_)] / value.sum(axis=1)
        return cls.of(estimator.tree_, fraction)

    def predict_many(self, x32: np.ndarray) -> np.ndarray:
        return self.value_array[self.raw.apply(x32)]


@dataclass(frozen=True, slots=True)
class _Ensemble:
    """Trees whose leaf values are summed, then linked: a forest (mean) or boosting."""

    trees: tuple[_Tree, ...]
    walk: EnsembleWalk

    @classmethod
    def of(cls, trees: Sequence[_Tree], offset: float, logistic: bool) -> _Ensemble:
        children, feature, threshold, roots = [], [], [], []
        start = 0
        depth = 0
        for tree in trees:
            n = len(tree.walk.left)
            left = np.asarray(tree.walk.left)
            is_leaf = left == -1
            own = np.arange(start, start + n)
            right = np.where(is_leaf, own, np.asarray(tree.walk.right) + start)
            children.append(np.stack((right, np.where(is_leaf, own, left + start)), axis=1))
            feature.append(np.where(is_leaf, 0, np.asarray(tree.walk.feature)))
            threshold.append(np.where(is_leaf, np.inf, np.asarray(tree.walk.threshold)))
            roots.append(start)
            start += n
            depth = max(depth, int(tree.raw.max_depth))
        walk = EnsembleWalk(
            children=np.concatenate(children).astype(np.int64),
            feature=np.concatenate(feature).astype(np.int64),
            threshold=np.concatenate(threshold).astype(np.float64),
            value=np.concatenate([tree.value_array for tree in trees]).astype(np.float64),
            roots=np.asarray(roots, dtype=np.int64),
            depth=depth,
            offset=float(offset),
            logistic=logistic,
        )
        return cls(trees=tuple(trees), walk=walk)

    @classmethod
    def forest(cls, forest: RandomForestClassifier) -> _Ensemble:
        n = len(forest.estimators_)
        trees = [_Tree.classifier(e) for e in forest.estimators_]
        scaled = [_Tree.of(t.raw, t.value_array / n) for t in trees]
        return cls.of(scaled, 0.0, logistic=False)

    @classmethod
    def boosting(cls, model: GradientBoostingClassifier) -> _Ensemble:
        rate = float(model.learning_rate)
        trees = [_Tree.of(e.tree_, rate * e.tree_.value[:, 0, 0]) for e in model.estimators_[:, 0]]
        n_features = int(model.n_features_in_)
        init = float(model._raw_predict_init(np.zeros((1, n_features), dtype=np.float32))[0, 0])
        return cls.of(trees, init, logistic=True)

    def predict_many(self, x32: np.ndarray) -> np.ndarray:
        total = np.full(x32.shape[0], self.walk.offset)
        for tree in self.trees:
            total += tree.predict_many(x32)
        return 0.5 * (1.0 + np.tanh(0.5 * total)) if self.walk.logistic else total


@dataclass(frozen=True, slots=True)
class _Linear:
    """Logistic regression after standard scaling: sigmoid(w . x + b), folded into one step."""

    walk: LinearWalk
    weights_array: np.ndarray

    @classmethod
    def of(cls, scaler: StandardScaler, model: LogisticRegression) -> _Linear:
        coef = model.coef_[0] * (1.0 if _true_column(model.classes_) == 1 else -1.0)
        intercept = model.intercept_[0] * (1.0 if _true_column(model.classes_) == 1 else -1.0)
        mean = scaler.mean_ if scaler.mean_ is not None else np.zeros_like(coef)
        scale = scaler.scale_ if scaler.scale_ is not None else np.ones_like(coef)
        weights = coef / scale
        bias = float(intercept - (weights * mean).sum())
        return cls(walk=LinearWalk(weights=weights.tolist(), bias=bias), weights_array=weights)

    def predict_many(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.weights_array + self.walk.bias
        return 0.5 * (1.0 + np.tanh(0.5 * z))


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
    _statistics_array: np.ndarray = field(repr=False)
    _many: Callable[[np.ndarray], np.ndarray] | None = field(repr=False)
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
        true_column = _true_column(classes) if binary else -1
        walk: Walk | None = None
        many: Callable[[np.ndarray], np.ndarray] | None = None
        float32_inputs = False
        statistics = np.zeros(len(names))
        imputer = steps[0] if isinstance(steps[0], SimpleImputer) else None
        if imputer is not None and imputer.strategy in ("median", "mean") and binary:
            statistics = np.asarray(imputer.statistics_, dtype=np.float64)
            rest = steps[1:]
            if len(rest) == 1 and isinstance(model, DecisionTreeClassifier):
                tree = _Tree.classifier(model)
                walk, many, float32_inputs = tree.walk, tree.predict_many, True
            elif len(rest) == 1 and isinstance(model, RandomForestClassifier):
                ensemble = _Ensemble.forest(model)
                walk, many, float32_inputs = ensemble.walk, ensemble.predict_many, True
            elif (
                len(rest) == 1
                and isinstance(model, GradientBoostingClassifier)
                and model.estimators_.shape[1] == 1
                and model.init_ != "zero"
            ):
                ensemble = _Ensemble.boosting(model)
                walk, many, float32_inputs = ensemble.walk, ensemble.predict_many, True
            elif (
                len(rest) == 2
                and isinstance(rest[0], StandardScaler)
                and isinstance(model, LogisticRegression)
                and model.coef_.shape[0] == 1
            ):
                linear = _Linear.of(rest[0], model)
                walk, many = linear.walk, linear.predict_many
        compiled = None
        # A column the imputer dropped (never seen: statistic NaN) shifts the model's
        # inputs: no fast path then.
        if (walk is not None and len(statistics) == len(names) and len(names) > 0
                and np.isfinite(statistics).all()
                and getattr(model, "n_features_in_", len(names)) == len(names)):
            rounded = array("f", statistics.tolist()) if float32_inputs else statistics.tolist()
            compiled = CompiledModel(walk, tuple(rounded), float32_inputs)
        return cls(
            version=version,
            feature_collection_id=feature_collection_id,
            feature_names=names,
            pipeline=pipeline,
            compiled=compiled,
            _statistics_array=statistics,
            _many=many if compiled is not None else None,
            _true_column=true_column,
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
        """P(True) for each row of ``X`` (n x features); NaN means missing."""
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.feature_names):
            raise ValueError(f"expected shape (n, {len(self.feature_names)}), got {matrix.shape}")
        if self._many is None or self.compiled is None:
            if self._true_column < 0:
                raise ValueError("the model was not trained on both classes")
            proba = self.pipeline.predict_proba(matrix)
            return np.asarray(proba[:, self._true_column], dtype=np.float64)
        filled = np.where(np.isnan(matrix), self._statistics_array, matrix)
        if self.compiled.float32_inputs:
            filled = np.ascontiguousarray(filled, dtype=np.float32)
        if not np.isfinite(filled).all():
            raise ValueError("feature values must be finite numbers or NaN")
        return np.asarray(self._many(filled), dtype=np.float64)


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
