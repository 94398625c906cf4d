"""Evaluation records: holdout curves, holdout size and the training profile, kept per version."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from config.job import JobConfiguration, ModelType
from learning.features import default_collections
from learning.training.candidate import Candidate, make_candidate
from learning.training.metrics import curves
from learning.training.pipeline import split_by_location
from learning.training.sets import build_training_set
from players.simulator import Savanna
from storage.sqlite.registry import SQLiteModelRegistry

JOB = JobConfiguration(model_type=ModelType.DECISION_TREE)
_, EVERY_FEATURE = default_collections(1_000)


@pytest.fixture(scope="module")
def savanna() -> Savanna:
    return Savanna(seed=3, n_locations=16, hours=72)


@pytest.fixture(scope="module")
def candidate(savanna: Savanna) -> Candidate:
    return make_candidate(savanna.readings(), savanna.outcomes(), EVERY_FEATURE, JOB,
                          now_ms=1_800_000_000_000)


def test_evaluation_record_holds_curves_holdout_and_training_profile(
        candidate: Candidate, savanna: Savanna) -> None:
    record = candidate.evaluation
    assert set(record) == {"roc", "pr", "holdout", "profile"}
    roc, pr = record["roc"], record["pr"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"]) >= 2
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["thresholds"]) <= 0)
    assert len(pr["precision"]) == len(pr["recall"]) >= 2
    assert record["holdout"] == {"rows": candidate.trained.n_test,
                                 "positives": int(candidate.trained.y_true.sum())}
    assert list(record["profile"]) == sorted(EVERY_FEATURE.features)
    training = build_training_set(savanna.readings(), savanna.outcomes(), EVERY_FEATURE,
                                  JOB.window_ms)
    train_mask, _ = split_by_location(training.location_ids, JOB.seed, JOB.test_fraction,
                                      training.y)
    column = training.feature_names.index("animal_estimate")
    fitted_on = training.X[train_mask, column]
    profile = record["profile"]["animal_estimate"]
    assert profile["edges"][0] == pytest.approx(np.nanmin(fitted_on))
    assert profile["edges"][-1] == pytest.approx(np.nanmax(fitted_on))
    for entry in record["profile"].values():
        assert len(entry["proportions"]) == len(entry["edges"]) - 1
        assert sum(entry["proportions"]) + entry["missing"] == pytest.approx(1.0)


def test_curves_are_thinned_to_the_limit_keeping_both_ends() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(5000) < 0.3
    score = np.clip(y * 0.2 + rng.random(5000), 0, 1)
    drawn = curves(y, score, max_points=50)
    assert 2 <= len(drawn["roc"]["fpr"]) <= 50 and len(drawn["pr"]["recall"]) <= 50
    assert drawn["roc"]["fpr"][0] == 0.0 and drawn["roc"]["fpr"][-1] == 1.0
    assert drawn["roc"]["thresholds"][0] == pytest.approx(score.max() + 1.0)
    assert drawn["pr"]["recall"][0] == 1.0 and drawn["pr"]["recall"][-1] == 0.0


def test_curves_of_a_holdout_with_one_class_are_empty() -> None:
    drawn = curves(np.ones(10, dtype=bool), np.linspace(0, 1, 10))
    assert drawn == {"roc": {"fpr": [], "tpr": [], "thresholds": []},
                     "pr": {"precision": [], "recall": []}}


def test_registry_keeps_the_evaluation_record_of_each_version(tmp_path: Path,
                                                              candidate: Candidate) -> None:
    registry = SQLiteModelRegistry(tmp_path / "models.sqlite")
    try:
        with_record = registry.register(
            feature_collection_id=1, job=JOB.to_mapping(), metrics=dict(candidate.metrics),
            lineage={}, artifact=candidate.artifact, created_at_ms=1,
            evaluation=candidate.evaluation)
        without = registry.register(feature_collection_id=1, job=JOB.to_mapping(), metrics={},
                                    lineage={}, artifact=b"x", created_at_ms=2)
        assert json.loads(registry.get(with_record).evaluation) == candidate.evaluation
        assert registry.get(without).evaluation == "{}"
    finally:
        registry.close()


_OLD_SCHEMA = """
CREATE TABLE models (version INTEGER PRIMARY KEY, created_at_ms INTEGER NOT NULL,
    feature_collection_id INTEGER NOT NULL, job TEXT NOT NULL, metrics TEXT NOT NULL,
    lineage TEXT NOT NULL, artifact_sha256 TEXT NOT NULL) STRICT;
CREATE TABLE artifacts (version INTEGER PRIMARY KEY, data BLOB NOT NULL) STRICT;
CREATE TABLE status_log (seq INTEGER PRIMARY KEY, version INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL, at_ms INTEGER NOT NULL) STRICT;
CREATE INDEX status_by_version ON status_log (version, seq);
CREATE TABLE champion_log (seq INTEGER PRIMARY KEY, version INTEGER NOT NULL,
    previous_version INTEGER, reason TEXT NOT NULL, at_ms INTEGER NOT NULL) STRICT;
INSERT INTO models VALUES (1, 5, 0, '{}', '[["roc_auc", 0.7]]', '{}', 'sha');
INSERT INTO status_log VALUES (1, 1, 'candidate', 'registered', 5);
"""


def test_a_registry_file_from_before_evaluation_records_gains_the_column(
        tmp_path: Path) -> None:
    path = tmp_path / "models.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    conn.close()
    reader = SQLiteModelRegistry(path, read_only=True)  # e.g. `rml status` on an old file
    try:
        assert reader.get(1).evaluation == "{}"
        assert reader.compiled_form(1) is None  # from before compiled forms too
    finally:
        reader.close()
    registry = SQLiteModelRegistry(path)
    try:
        version = registry.register(feature_collection_id=0, job={}, metrics={}, lineage={},
                                    artifact=b"x", created_at_ms=6,
                                    evaluation={"holdout": {"rows": 3, "positives": 1}},
                                    compiled=b"form")
        assert registry.get(1).evaluation == "{}"
        assert (registry.compiled_form(1), registry.compiled_form(version)) == (None, b"form")
        assert json.loads(registry.get(version).evaluation)["holdout"]["rows"] == 3
    finally:
        registry.close()
