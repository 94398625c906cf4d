"""Serving snapshots: a fitted pipeline frozen for the predictor's hot path.

``Pipeline.predict_proba`` validates its input on every call (~60-75 us for one row).
For the pipelines we build, the same answer is cheap to compute by hand: the imputer's
medians fill NaN, then a decision tree is walked in pure Python (~1-2 us), a random forest
or gradient boosting level by level over all its trees at once with numpy, and logistic
regression is a dot product. Trees compare float32 inputs with float64 thresholds, exactly
as scikit-learn does, so the fast path gives scikit-learn's probabilities (see tests). Any
other pipeline goes through ``predict_proba``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

__all__ = [
    "FeatureInputError",
    "InvalidFeatureValue",
    "MissingFeature",
    "ServingModel",
    "UnknownFeature",
    "features_from_mapping",
]


class FeatureInputError(KeyError):
    """Features given for a prediction do not match the model's; ``reason`` says how."""

    def __init__(self, reason: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.names = names

    def __str__(self) -> str:
        return self.reason


class MissingFeature(FeatureInputError):
    """A feature the model needs was not given."""


class UnknownFeature(FeatureInputError):
    """A feature was given that the model does not use."""


class InvalidFeatureValue(FeatureInputError):
    """A feature value is not a number (null stands for a missing value and is allowed)."""


def features_from_mapping(
    feature_names: Sequence[str], mapping: Mapping[str, object]
) -> tuple[float, ...]:
    """The values of ``mapping`` in ``feature_names`` order; ``None`` becomes NaN (imputed).

    Raises ``MissingFeature``, ``UnknownFeature`` or ``InvalidFeatureValue`` naming the features.
    """
    missing = tuple(name for name in feature_names if name not in mapping)
    if missing:
        raise MissingFeature(f"missing features: {', '.join(missing)}", missing)
    if len(mapping) != len(feature_names):
        known = set(feature_names)
        unknown = tuple(sorted(str(name) for name in mapping if name not in known))
        raise UnknownFeature(f"unknown features: {', '.join(unknown)}", unknown)
    values = []
    for name in feature_names:
        value = mapping[name]
        if value is None:
            values.append(math.nan)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values.append(float(value))
        else:
            raise InvalidFeatureValue(
                f"feature {name} must be a number or null, got {type(value).__name__}", (name,)
            )
    return tuple(values)


def _float32(values: Sequence[float]) -> array:
    return array("f", values)


def _true_column(classes: np.ndarray) -> int:
    return [bool(c) for c in classes].index(True)


@dataclass(frozen=True, slots=True)
class _Tree:
    """One fitted tree as flat lists (a leaf has left == -1) with a value per node."""

    left: list[int]
    right: list[int]
    feature: list[int]
    threshold: list[float]
    value: list[float]
    value_array: np.ndarray
    raw: Any  # sklearn's Tree, for ``apply`` on batches

    @classmethod
    def of(cls, tree: Any, node_values: np.ndarray) -> _Tree:
        return cls(
            left=tree.children_left.tolist(),
            right=tree.children_right.tolist(),
            feature=tree.feature.tolist(),
            threshold=tree.threshold.tolist(),
            value=node_values.tolist(),
            value_array=node_values,
            raw=tree,
        )

    @classmethod
    def classifier(cls, estimator: DecisionTreeClassifier) -> _Tree:
        """A classification tree whose node values are P(True) (class fractions, normalised)."""
        value = estimator.tree_.value[:, 0, :]
        fraction = value[:, _true_column(estimator.classes_)] / value.sum(axis=1)
        return cls.of(estimator.tree_, fraction)

    def predict_one(self, x: Sequence[float]) -> float:
        left, right, feature, threshold = self.left, self.right, self.feature, self.threshold
        node = 0
        while left[node] != -1:
            node = left[node] if x[feature[node]] <= threshold[node] else right[node]
        return self.value[node]

    def predict_many(self, x32: np.ndarray) -> np.ndarray:
        return self.value_array[self.raw.apply(x32)]


@dataclass(frozen=True, slots=True)
class _Ensemble:
    """Trees whose leaf values are summed, then ``link``ed: a forest (mean) or boosting.

    For one row all trees are walked at once, level by level, in one node table.
    """

    trees: tuple[_Tree, ...]
    children: np.ndarray  # (nodes, 2): [right, left]; a leaf points at itself
    feature: np.ndarray
    threshold: np.ndarray  # +inf at leaves, so every step from a leaf stays there
    value: np.ndarray
    roots: np.ndarray
    depth: int
    offset: float  # added to the sum of leaf values before ``link``
    logistic: bool  # link: sigmoid (boosting) or identity (a forest's mean)

    @classmethod
    def of(cls, trees: Sequence[_Tree], offset: float, logistic: bool) -> _Ensemble:
        children, feature, threshold, roots = [], [], [], []
        start = 0
        depth = 0
        for tree in trees:
            n = len(tree.left)
            left = np.asarray(tree.left)
            is_leaf = left == -1
            own = np.arange(start, start + n)
            right = np.where(is_leaf, own, np.asarray(tree.right) + start)
            children.append(np.stack((right, np.where(is_leaf, own, left + start)), axis=1))
            feature.append(np.where(is_leaf, 0, np.asarray(tree.feature)))
            threshold.append(np.where(is_leaf, np.inf, np.asarray(tree.threshold)))
            roots.append(start)
            start += n
            depth = max(depth, int(tree.raw.max_depth))
        return cls(
            trees=tuple(trees),
            children=np.concatenate(children),
            feature=np.concatenate(feature),
            threshold=np.concatenate(threshold),
            value=np.concatenate([tree.value_array for tree in trees]),
            roots=np.asarray(roots),
            depth=depth,
            offset=offset,
            logistic=logistic,
        )

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

    def predict_one(self, x: Sequence[float]) -> float:
        xs = np.asarray(x, dtype=np.float64)  # already float32-rounded values
        node = self.roots
        children, feature, threshold = self.children, self.feature, self.threshold
        for _ in range(self.depth):
            node = children[node, (xs[feature[node]] <= threshold[node]).view(np.int8)]
        total = self.offset + float(self.value[node].sum())
        return _sigmoid(total) if self.logistic else total

    def predict_many(self, x32: np.ndarray) -> np.ndarray:
        total = np.full(x32.shape[0], self.offset)
        for tree in self.trees:
            total += tree.predict_many(x32)
        return 0.5 * (1.0 + np.tanh(0.5 * total)) if self.logistic else total


@dataclass(frozen=True, slots=True)
class _Linear:
    """Logistic regression after standard scaling: sigmoid(w . x + b), folded into one step."""

    weights: list[float]
    bias: float
    weights_array: np.ndarray

    @classmethod
    def of(cls, scaler: StandardScaler, model: LogisticRegression) -> _Linear:
        coef = model.coef_[0] * (1.0 if _true_column(model.classes_) == 1 else -1.0)
        intercept = model.intercept_[0] * (1.0 if _true_column(model.classes_) == 1 else -1.0)
        mean = scaler.mean_ if scaler.mean_ is not None else np.zeros_like(coef)
        scale = scaler.scale_ if scaler.scale_ is not None else np.ones_like(coef)
        weights = coef / scale
        bias = float(intercept - (weights * mean).sum())
        return cls(weights=weights.tolist(), bias=bias, weights_array=weights)

    def predict_one(self, x: Sequence[float]) -> float:
        z = self.bias
        for w, v in zip(self.weights, x, strict=True):
            z += w * v
        return _sigmoid(z)

    def predict_many(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.weights_array + self.bias
        return 0.5 * (1.0 + np.tanh(0.5 * z))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True)
class ServingModel:
    """An immutable model snapshot for predictions: ``predict_one`` gives P(label is True).

    Build it with ``ServingModel.from_pipeline``; ``fast`` tells whether the hand-rolled path
    is used.
    """

    version: int
    feature_collection_id: int
    feature_names: tuple[str, ...]
    pipeline: Pipeline = field(repr=False)
    fast: bool
    _statistics: list[float] = field(repr=False)
    _statistics_array: np.ndarray = field(repr=False)
    _float32_inputs: bool = field(repr=False)
    _one: Callable[[Sequence[float]], float] | None = field(repr=False)
    _many: Callable[[np.ndarray], np.ndarray] | None = field(repr=False)
    _true_column: int = field(repr=False)

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
        one: Callable[[Sequence[float]], float] | None = None
        many: Callable[[np.ndarray], np.ndarray] | None = None
        float32_inputs = False
        statistics = np.zeros(len(names))
        imputer = steps[0] if isinstance(steps[0], SimpleImputer) else None
        if imputer is not None and imputer.strategy in ("median", "mean") and binary:
            statistics = np.asarray(imputer.statistics_, dtype=np.float64)
            rest = steps[1:]
            if len(rest) == 1 and isinstance(model, DecisionTreeClassifier):
                tree = _Tree.classifier(model)
                one, many, float32_inputs = tree.predict_one, tree.predict_many, True
            elif len(rest) == 1 and isinstance(model, RandomForestClassifier):
                ensemble = _Ensemble.forest(model)
                one, many, float32_inputs = ensemble.predict_one, ensemble.predict_many, True
            elif (
                len(rest) == 1
                and isinstance(model, GradientBoostingClassifier)
                and model.estimators_.shape[1] == 1
                and model.init_ != "zero"
            ):
                ensemble = _Ensemble.boosting(model)
                one, many, float32_inputs = ensemble.predict_one, ensemble.predict_many, True
            elif (
                len(rest) == 2
                and isinstance(rest[0], StandardScaler)
                and isinstance(model, LogisticRegression)
                and model.coef_.shape[0] == 1
            ):
                linear = _Linear.of(rest[0], model)
                one, many = linear.predict_one, linear.predict_many
        if len(statistics) != len(names):
            one = many = None
        return cls(
            version=version,
            feature_collection_id=feature_collection_id,
            feature_names=names,
            pipeline=pipeline,
            fast=one is not None,
            _statistics=(
                list(array("f", statistics.tolist())) if float32_inputs else statistics.tolist()
            ),
            _statistics_array=statistics,
            _float32_inputs=float32_inputs,
            _one=one,
            _many=many,
            _true_column=true_column,
        )

    def predict_one(self, values: Sequence[float]) -> float:
        """P(True) for one feature vector in ``feature_names`` order; NaN means missing.

        Raises ``ValueError`` for a wrong length or an infinite value.
        """
        if len(values) != len(self.feature_names):
            raise ValueError(f"expected {len(self.feature_names)} values, got {len(values)}")
        if self._one is None:
            return float(self.predict_many(np.asarray([values], dtype=np.float64))[0])
        raw = _float32(values) if self._float32_inputs else values
        x = [v if v == v else s for v, s in zip(raw, self._statistics, strict=True)]
        if not math.isfinite(sum(x)):
            raise ValueError("feature values must be finite numbers or NaN")
        return self._one(x)

    def predict_many(self, X: np.ndarray) -> np.ndarray:
        """P(True) for each row of ``X`` (n x features); NaN means missing."""
        matrix = np.asarray(X, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.feature_names):
            raise ValueError(f"expected shape (n, {len(self.feature_names)}), got {matrix.shape}")
        if self._many is None:
            if self._true_column < 0:
                raise ValueError("the model was not trained on both classes")
            proba = self.pipeline.predict_proba(matrix)
            return np.asarray(proba[:, self._true_column], dtype=np.float64)
        filled = np.where(np.isnan(matrix), self._statistics_array, matrix)
        if self._float32_inputs:
            filled = np.ascontiguousarray(filled, dtype=np.float32)
        if not np.isfinite(filled).all():
            raise ValueError("feature values must be finite numbers or NaN")
        return np.asarray(self._many(filled), dtype=np.float64)
