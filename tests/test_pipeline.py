"""Pipelines, the location split, reproducible training and the AUC against the hidden truth."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from config.job import JobConfiguration, ModelType
from learning.features import default_collections
from learning.training.metrics import holdout_metrics
from learning.training.pipeline import TrainingError, build_pipeline, split_by_location, train
from learning.training.sets import TrainingSet, build_training_set
from players.ceiling import holdout_ceiling
from players.simulator import Savanna

WINDOW = 6 * 3_600_000
SMALL = {  # small ensembles keep the suite fast; the defaults are measured in the report
    ModelType.RANDOM_FOREST: (("n_estimators", 20),),
    ModelType.GRADIENT_BOOSTING: (("n_estimators", 30),),
}


@pytest.fixture(scope="module")
def savanna() -> Savanna:
    return Savanna(seed=7)


@pytest.fixture(scope="module")
def training_set(savanna: Savanna) -> TrainingSet:
    return build_training_set(
        savanna.readings(), savanna.outcomes(), default_collections(0)[1], WINDOW
    )


def test_split_is_deterministic_and_no_location_straddles() -> None:
    locations = np.repeat(np.arange(200), 5)
    train_a, test_a = split_by_location(locations, seed=7, test_fraction=0.25)
    train_b, test_b = split_by_location(locations, seed=7, test_fraction=0.25)
    np.testing.assert_array_equal(test_a, test_b)
    assert not (train_a & test_a).any() and (train_a | test_a).all()
    assert not set(locations[train_a]) & set(locations[test_a])
    assert 0.15 < test_a.mean() < 0.35
    _, other_seed = split_by_location(locations, seed=8, test_fraction=0.25)
    assert not np.array_equal(test_a, other_seed)


def test_a_location_stays_on_its_side_as_data_grows() -> None:
    early = np.arange(50)
    later = np.concatenate([np.arange(50), np.arange(50, 80), np.arange(50)])
    _, test_early = split_by_location(early, 7, 0.25)
    _, test_later = split_by_location(later, 7, 0.25)
    assert set(early[test_early]) == set(later[test_later]) & set(early)


def test_split_falls_back_to_rows_when_locations_cannot_give_both_classes() -> None:
    # Each location has one class only: no split by location gives both classes both sides.
    locations = np.array([1] * 10 + [2] * 10)
    labels = locations == 1
    train_mask, test_mask = split_by_location(locations, 7, 0.25, labels)
    assert test_mask.sum() == 5 and train_mask.sum() == 15
    assert labels[train_mask].any() and not labels[train_mask].all()
    again = split_by_location(locations, 7, 0.25, labels)
    np.testing.assert_array_equal(again[1], test_mask)


def test_a_single_location_falls_back_to_a_row_split() -> None:
    train_mask, test_mask = split_by_location(np.zeros(8, dtype=np.int64), 7, 0.25)
    assert test_mask.sum() == 2 and train_mask.sum() == 6


def test_logistic_regression_pipeline_scales_and_others_do_not() -> None:
    for model_type in ModelType:
        pipeline = build_pipeline(JobConfiguration(model_type=model_type, seed=3))
        has_scaler = any(isinstance(step, StandardScaler) for _, step in pipeline.steps)
        assert has_scaler == (model_type is ModelType.LOGISTIC_REGRESSION)
        assert pipeline.steps[0][1].strategy == "median"
        assert pipeline.named_steps["model"].random_state == 3


def test_pipeline_uses_the_jobs_hyperparameters() -> None:
    job = JobConfiguration.from_mapping(
        {"model_type": "random_forest", "hyperparameters": {"n_estimators": 17, "max_depth": 4}}
    )
    model = build_pipeline(job).named_steps["model"]
    assert (model.n_estimators, model.max_depth, model.min_samples_leaf) == (17, 4, 10)


@pytest.mark.parametrize("model_type", list(ModelType))
def test_same_facts_and_job_give_identical_metrics(
    training_set: TrainingSet, model_type: ModelType
) -> None:
    job = JobConfiguration(model_type=model_type, hyperparameters=SMALL.get(model_type, ()))
    first, second = train(training_set, job), train(training_set, job)
    assert first.metrics == second.metrics
    np.testing.assert_array_equal(first.y_score, second.y_score)
    assert first.split == "location"
    assert first.n_train + first.n_test == len(training_set)
    assert {name for name, _ in first.metrics} == {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "log_loss",
    }


def test_training_on_an_all_nan_feature_still_predicts_full_rows(
    training_set: TrainingSet,
) -> None:
    X = np.array(training_set.X)
    X[:, 0] = np.nan
    blank = TrainingSet(
        X,
        training_set.y,
        training_set.location_ids,
        training_set.timestamps,
        training_set.feature_names,
        training_set.collection_id,
    )
    model = train(blank, JobConfiguration())
    assert model.pipeline.predict_proba(X[:3]).shape == (3, 2)


def test_single_class_training_set_is_refused(training_set: TrainingSet) -> None:
    one_class = TrainingSet(
        training_set.X,
        np.ones(len(training_set), dtype=bool),
        training_set.location_ids,
        training_set.timestamps,
        training_set.feature_names,
        training_set.collection_id,
    )
    with pytest.raises(TrainingError):
        train(one_class, JobConfiguration())


def test_default_decision_tree_is_within_a_tenth_of_the_best_achievable_auc(
    savanna: Savanna, training_set: TrainingSet
) -> None:
    model = train(training_set, JobConfiguration())
    learned, best = holdout_ceiling(savanna, training_set, model)
    assert best > 0.75  # the truth carries real signal
    assert learned > best - 0.1
    assert learned == pytest.approx(holdout_metrics(model.y_true, model.y_score)["roc_auc"])
