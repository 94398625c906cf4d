"""JobConfiguration: defaults, validation with the field named, and the mapping round trip."""

from __future__ import annotations

import json
import tomllib

import pytest

from config.errors import ConfigError
from config.job import DEFAULT_WINDOW_MS, HYPERPARAMETERS, JobConfiguration, ModelType


def test_default_job_is_a_decision_tree_with_default_hyperparameters() -> None:
    job = JobConfiguration()
    assert job.model_type is ModelType.DECISION_TREE
    assert job.params == {"max_depth": 6, "min_samples_leaf": 20}
    assert (job.test_fraction, job.seed, job.window_ms) == (0.25, 7, DEFAULT_WINDOW_MS)
    assert JobConfiguration.from_mapping({}) == job


def test_toml_job_table_parses_with_nested_hyperparameters() -> None:
    data = tomllib.loads(
        """
        [job]
        model_type = "random_forest"
        seed = 11
        [job.hyperparameters]
        n_estimators = 50
        """
    )
    job = JobConfiguration.from_mapping(data["job"])
    assert job.model_type is ModelType.RANDOM_FOREST
    assert job.params == {"n_estimators": 50, "max_depth": 8, "min_samples_leaf": 10}
    assert job.seed == 11


@pytest.mark.parametrize("model_type", list(ModelType))
def test_every_model_type_round_trips_through_json(model_type: ModelType) -> None:
    job = JobConfiguration(model_type=model_type, seed=3, test_fraction=0.3)
    text = json.dumps(job.to_mapping())
    assert JobConfiguration.from_mapping(json.loads(text)) == job
    assert set(job.params) == set(HYPERPARAMETERS[model_type])


def test_hyperparameters_are_immutable_pairs() -> None:
    job = JobConfiguration.from_mapping(
        {"model_type": "logistic_regression", "hyperparameters": {"C": 2}}
    )
    assert job.hyperparameters == (("C", 2.0), ("max_iter", 200))
    assert isinstance(job.hyperparameters, tuple)
    with pytest.raises(AttributeError):
        job.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"model_type": "svm"}, "job.model_type"),
        ({"model_type": 3}, "job.model_type"),
        ({"learning_rate": 0.1}, "job.learning_rate"),
        ({"hyperparameters": {"n_estimators": 10}}, "job.hyperparameters.n_estimators"),
        ({"hyperparameters": {"max_depth": 0}}, "job.hyperparameters.max_depth"),
        ({"hyperparameters": {"max_depth": 33}}, "job.hyperparameters.max_depth"),
        ({"hyperparameters": {"max_depth": 6.0}}, "job.hyperparameters.max_depth"),
        ({"hyperparameters": {"max_depth": "6"}}, "job.hyperparameters.max_depth"),
        ({"hyperparameters": {"min_samples_leaf": True}}, "job.hyperparameters.min_samples_leaf"),
        ({"hyperparameters": []}, "job.hyperparameters"),
        (
            {"model_type": "logistic_regression", "hyperparameters": {"C": 0}},
            "job.hyperparameters.C",
        ),
        (
            {"model_type": "logistic_regression", "hyperparameters": {"C": float("nan")}},
            "job.hyperparameters.C",
        ),
        (
            {"model_type": "gradient_boosting", "hyperparameters": {"learning_rate": 1.5}},
            "job.hyperparameters.learning_rate",
        ),
        (
            {"model_type": "random_forest", "hyperparameters": {"n_estimators": 501}},
            "job.hyperparameters.n_estimators",
        ),
        ({"test_fraction": 0.05}, "job.test_fraction"),
        ({"test_fraction": 0.6}, "job.test_fraction"),
        ({"test_fraction": "0.2"}, "job.test_fraction"),
        ({"seed": -1}, "job.seed"),
        ({"seed": 1.5}, "job.seed"),
        ({"window_ms": 0}, "job.window_ms"),
    ],
)
def test_invalid_configuration_is_refused_with_the_field_named(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        JobConfiguration.from_mapping(data)
    assert caught.value.key == key


def test_upper_bounds_are_inclusive_and_open_lower_bounds_exclusive() -> None:
    job = JobConfiguration.from_mapping(
        {
            "model_type": "gradient_boosting",
            "test_fraction": 0.5,
            "hyperparameters": {"learning_rate": 1, "max_depth": 16},
        }
    )
    assert job.params["learning_rate"] == 1.0
    assert job.test_fraction == 0.5
