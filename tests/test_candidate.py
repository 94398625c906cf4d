"""Model candidates from simulated facts: lineage, the champion on the same holdout, artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from config.job import JobConfiguration, ModelType
from learning.features import default_collections
from learning.models.artifacts import load_model
from learning.models.lineage import facts_fingerprint
from learning.training.candidate import Candidate, ChampionRef, make_candidate
from learning.training.metrics import roc_auc
from learning.training.pipeline import split_by_location
from learning.training.sets import build_training_set
from messages.facts import Outcome, Reading
from players.simulator import Savanna

NOW_MS = 1_800_000_000_000
JOB = JobConfiguration(model_type=ModelType.DECISION_TREE)
FALLBACK, EVERY_FEATURE = default_collections(1_000)


@pytest.fixture(scope="module")
def savanna() -> Savanna:
    return Savanna(seed=3, n_locations=16, hours=72)


@pytest.fixture(scope="module")
def readings(savanna: Savanna) -> tuple[Reading, ...]:
    return savanna.readings()


@pytest.fixture(scope="module")
def outcomes(savanna: Savanna) -> tuple[Outcome, ...]:
    return savanna.outcomes()


@pytest.fixture(scope="module")
def candidate(readings: tuple[Reading, ...], outcomes: tuple[Outcome, ...]) -> Candidate:
    return make_candidate(readings, outcomes, EVERY_FEATURE, JOB, now_ms=NOW_MS)


@pytest.fixture(scope="module")
def champion(readings: tuple[Reading, ...], outcomes: tuple[Outcome, ...]) -> ChampionRef:
    """An older champion: the fallback collection, trained on the first half of the outcomes."""
    earlier = outcomes[: len(outcomes) // 2]
    job = JobConfiguration(model_type=ModelType.LOGISTIC_REGRESSION)
    older = make_candidate(readings, earlier, FALLBACK, job, now_ms=NOW_MS)
    return ChampionRef(4, older.trained.pipeline, FALLBACK, job.window_ms)


def test_lineage_fingerprints_the_facts_the_candidate_saw(
    candidate: Candidate, readings: tuple[Reading, ...], outcomes: tuple[Outcome, ...]
) -> None:
    assert candidate.lineage.facts == facts_fingerprint(readings, outcomes)
    assert candidate.lineage.facts.outcomes == len(outcomes)
    assert candidate.lineage.feature_collection_id == EVERY_FEATURE.id
    assert candidate.lineage.feature_names == EVERY_FEATURE.features
    assert candidate.lineage.job == JOB
    assert candidate.lineage.metrics == candidate.metrics
    assert candidate.lineage.created_at_ms == NOW_MS


def test_without_a_champion_there_is_no_champion_score(candidate: Candidate) -> None:
    metrics = dict(candidate.metrics)
    assert "champion_roc_auc" not in metrics and "champion_version" not in metrics
    assert (metrics["n_train"], metrics["n_test"]) == (
        candidate.trained.n_train, candidate.trained.n_test
    )
    assert metrics["roc_auc"] > 0.5


def test_champion_is_scored_on_the_candidates_holdout(
    readings: tuple[Reading, ...], outcomes: tuple[Outcome, ...], champion: ChampionRef
) -> None:
    result = make_candidate(readings, outcomes, EVERY_FEATURE, JOB, champion, now_ms=NOW_MS)
    metrics = dict(result.metrics)
    assert metrics["champion_version"] == 4.0

    # Independently: the candidate's split of its own rows, applied to the champion's features.
    ours = build_training_set(readings, outcomes, EVERY_FEATURE, JOB.window_ms)
    theirs = build_training_set(readings, outcomes, champion.collection, champion.window_ms)
    _, test_mask = split_by_location(ours.location_ids, JOB.seed, JOB.test_fraction, ours.y)
    # It is the holdout the candidate itself was scored on.
    np.testing.assert_array_equal(result.trained.y_true, ours.y[test_mask])
    scores = champion.pipeline.predict_proba(theirs.X[test_mask])[:, 1]
    assert metrics["champion_roc_auc"] == pytest.approx(roc_auc(theirs.y[test_mask], scores))
    assert metrics["champion_roc_auc"] != metrics["roc_auc"]


def test_a_champion_identical_to_the_candidate_scores_the_same(
    readings: tuple[Reading, ...], outcomes: tuple[Outcome, ...], candidate: Candidate
) -> None:
    twin = ChampionRef(9, candidate.trained.pipeline, EVERY_FEATURE, JOB.window_ms)
    result = make_candidate(readings, outcomes, EVERY_FEATURE, JOB, twin, now_ms=NOW_MS)
    metrics = dict(result.metrics)
    assert metrics["champion_roc_auc"] == pytest.approx(metrics["roc_auc"], abs=1e-12)


def test_artifact_round_trips_and_predicts_like_the_trained_pipeline(
    tmp_path: Path, candidate: Candidate, readings: tuple[Reading, ...],
    outcomes: tuple[Outcome, ...],
) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(candidate.artifact)
    restored = load_model(path.read_bytes())
    X = build_training_set(readings, outcomes, EVERY_FEATURE, JOB.window_ms).X
    np.testing.assert_array_equal(
        restored.predict_proba(X), candidate.trained.pipeline.predict_proba(X)
    )


def test_same_facts_and_job_give_identical_metrics(
    readings: tuple[Reading, ...], outcomes: tuple[Outcome, ...], candidate: Candidate,
    champion: ChampionRef,
) -> None:
    again = make_candidate(readings, outcomes, EVERY_FEATURE, JOB, now_ms=NOW_MS)
    assert again.metrics == candidate.metrics
    assert again.lineage == candidate.lineage
    with_champion = [
        make_candidate(readings, outcomes, EVERY_FEATURE, JOB, champion, now_ms=NOW_MS).metrics
        for _ in range(2)
    ]
    assert with_champion[0] == with_champion[1]


def test_fact_arrival_order_does_not_change_the_candidate(
    readings: tuple[Reading, ...], outcomes: tuple[Outcome, ...], candidate: Candidate
) -> None:
    order = np.random.default_rng(0).permutation(len(readings))
    shuffled = [readings[i] for i in order]
    again = make_candidate(shuffled, list(reversed(outcomes)), EVERY_FEATURE, JOB, now_ms=NOW_MS)
    assert again.metrics == candidate.metrics
    assert again.lineage.facts == candidate.lineage.facts

