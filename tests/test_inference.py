"""Serving snapshots: the fast path equals scikit-learn; feature input errors are named."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from config.job import JobConfiguration, ModelType
from learning.models.artifacts import dump_model, load_model
from learning.serving.compiled import (
    InvalidFeatureValue,
    MissingFeature,
    UnknownFeature,
    features_from_mapping,
)
from learning.serving.inference import ServingModel
from learning.training.pipeline import build_pipeline

NAMES = tuple(f"f{i}" for i in range(6))
SMALL = {
    ModelType.RANDOM_FOREST: (("n_estimators", 25),),
    ModelType.GRADIENT_BOOSTING: (("n_estimators", 25),),
}


def fitted(model_type: ModelType) -> Pipeline:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1500, len(NAMES))) * 10
    X[rng.random(X.shape) < 0.1] = np.nan
    X[:, 5] = np.nan  # never seen: imputed as 0
    y = np.nan_to_num(X[:, 0]) - 0.5 * np.nan_to_num(X[:, 1]) + rng.normal(size=1500) * 5 > 0
    job = JobConfiguration(model_type=model_type, hyperparameters=SMALL.get(model_type, ()))
    return build_pipeline(job).fit(X, y)


def probe_rows() -> np.ndarray:
    rng = np.random.default_rng(9)
    X = rng.normal(size=(400, len(NAMES))) * 12
    X[rng.random(X.shape) < 0.2] = np.nan
    X[0] = np.nan  # everything missing
    X[1] = np.float32(3.3)  # values a float32 rounding sits right at
    return X


@pytest.mark.parametrize("model_type", list(ModelType))
def test_fast_path_equals_sklearn_for_every_model_type(model_type: ModelType) -> None:
    pipeline = fitted(model_type)
    model = ServingModel.from_pipeline(
        pipeline, version=3, feature_collection_id=1, feature_names=NAMES
    )
    assert model.fast
    X = probe_rows()
    expected = pipeline.predict_proba(X)[:, 1]
    one = np.array([model.predict_one(tuple(row)) for row in X])
    np.testing.assert_allclose(one, expected, rtol=0, atol=1e-12)


def split_value_rows(pipeline: Pipeline) -> np.ndarray:
    """Rows at, and just either side of, each split threshold of a fitted tree."""
    tree = pipeline.named_steps["model"].tree_
    rows = []
    for node in np.flatnonzero(tree.children_left != -1):
        for nudge in (-1e-6, 0.0, 1e-6):
            row = np.zeros(len(NAMES))
            row[tree.feature[node]] = tree.threshold[node] + nudge
            rows.append(row)
    return np.array(rows)


def test_thresholds_compare_like_sklearn_at_the_exact_split_values() -> None:
    pipeline = fitted(ModelType.DECISION_TREE)
    model = ServingModel.from_pipeline(pipeline, 1, 1, NAMES)
    X = split_value_rows(pipeline)
    expected = pipeline.predict_proba(X)[:, 1]
    np.testing.assert_array_equal([model.predict_one(r) for r in X], expected)


def test_loaded_artifact_serves_the_same_answers() -> None:
    pipeline = fitted(ModelType.RANDOM_FOREST)
    served = ServingModel.from_pipeline(load_model(dump_model(pipeline)), 2, 1, NAMES)
    X = probe_rows()[:50]
    answers = [served.predict_one(tuple(row)) for row in X]
    np.testing.assert_allclose(answers, pipeline.predict_proba(X)[:, 1], atol=1e-12)


def test_pipeline_of_another_shape_goes_through_predict_proba() -> None:
    pipeline = fitted(ModelType.LOGISTIC_REGRESSION)
    odd = Pipeline([("model", pipeline.named_steps["model"])])  # no imputer: not ours
    model = ServingModel.from_pipeline(odd, 1, 1, NAMES)
    assert not model.fast
    row = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert model.predict_one(row) == pytest.approx(odd.predict_proba([row])[0, 1])


def test_wrong_length_or_infinite_values_are_refused() -> None:
    model = ServingModel.from_pipeline(fitted(ModelType.DECISION_TREE), 1, 1, NAMES)
    with pytest.raises(ValueError):
        model.predict_one([1.0, 2.0])
    with pytest.raises(ValueError):
        model.predict_one([math.inf, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError):
        model.predict_many(np.zeros((2, 3)))


def test_serving_model_is_immutable() -> None:
    model = ServingModel.from_pipeline(fitted(ModelType.DECISION_TREE), 1, 1, NAMES)
    with pytest.raises(AttributeError):
        model.version = 2  # type: ignore[misc]


def test_features_from_mapping_orders_values_and_treats_null_as_missing() -> None:
    values = features_from_mapping(("b", "a"), {"a": 1, "b": None})
    assert math.isnan(values[0]) and values[1] == 1.0


def test_missing_unknown_and_invalid_features_raise_named_errors() -> None:
    with pytest.raises(MissingFeature) as missing:
        features_from_mapping(("a", "b"), {"a": 1.0})
    assert missing.value.names == ("b",) and "b" in str(missing.value)
    with pytest.raises(UnknownFeature) as unknown:
        features_from_mapping(("a",), {"a": 1.0, "zz": 2.0})
    assert unknown.value.names == ("zz",)
    assert isinstance(unknown.value, KeyError)
    with pytest.raises(InvalidFeatureValue):
        features_from_mapping(("a",), {"a": "3"})
    with pytest.raises(InvalidFeatureValue):
        features_from_mapping(("a",), {"a": True})
