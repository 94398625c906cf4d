"""From facts to a registrable model candidate: train, compare with the champion, record lineage
and the evaluation record (holdout curves and the training feature profile for drift).

Pure (no actors, no stores): the learner reads facts and the champion from the
stores, calls ``make_candidate`` and writes what it returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from config.job import JobConfiguration
from learning.drift.psi import profile_features
from learning.features.collections import FeatureCollection
from learning.models.artifacts import dump_model
from learning.models.lineage import Lineage, code_version, facts_fingerprint
from learning.serving.inference import checked_compiled_form
from learning.training.metrics import curves, roc_auc
from learning.training.pipeline import Fit, TrainedModel, fit_locally, train
from learning.training.sets import TrainingSet, build_training_set
from messages.facts import Outcome, Reading

__all__ = ["Candidate", "ChampionRef", "evaluation_record", "make_candidate"]

_MIN_PROFILE_ROWS = 50  # fewer warm rows than this: profile every training row instead
_FORM_CHECK_ROWS = 256  # rows on which a compiled form must answer as predict_proba does


@dataclass(frozen=True, slots=True)
class ChampionRef:
    """The current champion, as needed to score it on the candidate's holdout."""

    version: int
    pipeline: Any
    collection: FeatureCollection
    window_ms: int


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """A trained model ready to register: artifact bytes, metrics, lineage, its evaluation
    record (the JSON-able mapping ``evaluation_record`` returns, checked free of NaN and
    infinities; the registry stores it as JSON) and its compiled form for predictors
    (``learning.serving.compiled``; None for a pipeline with no fast path)."""

    trained: TrainedModel
    artifact: bytes
    metrics: tuple[tuple[str, float], ...]
    lineage: Lineage
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    compiled: bytes | None = None


def make_candidate(
    readings: Sequence[Reading],
    outcomes: Sequence[Outcome],
    collection: FeatureCollection,
    job: JobConfiguration,
    champion: ChampionRef | None = None,
    now_ms: int | None = None,
    fit: Fit = fit_locally,
) -> Candidate:
    """Train on a point-in-time training set and score the champion on the same holdout.

    The champion's score (``champion_roc_auc``) is what the publish gate compares
    against: two models are only comparable on the same outcomes.
    """
    training_set = build_training_set(readings, outcomes, collection, job.window_ms)
    trained = train(training_set, job, fit)  # ``fit``: local, or an external trainer
    metrics = dict(trained.metrics)
    metrics["n_train"] = float(trained.n_train)
    metrics["n_test"] = float(trained.n_test)
    if champion is not None:
        metrics["champion_version"] = float(champion.version)
        metrics["champion_roc_auc"] = _champion_auc(readings, outcomes, training_set,
                                                    trained.test_mask, champion)
    ordered = tuple(sorted(metrics.items()))
    lineage = Lineage(
        facts=facts_fingerprint(readings, outcomes),
        feature_collection_id=collection.id,
        feature_names=collection.features,
        job=job,
        metrics=ordered,
        code_version=code_version(),
        created_at_ms=now_ms if now_ms is not None else int(time.time() * 1000),
    )
    first_reading = min((r.timestamp for r in readings), default=None)
    warm_from = None if first_reading is None else first_reading + job.window_ms
    evaluation = evaluation_record(trained, training_set, warm_from)
    # The registry's JSON encoding accepts NaN and infinities; strict JSON does not, so a
    # record holding one fails here (ValueError), before anything is registered.
    json.dumps(evaluation, sort_keys=True, allow_nan=False)
    # Checked on rows it was trained on: a form that would answer otherwise is not stored
    # (predictors then load the artifact).
    compiled = checked_compiled_form(trained.pipeline, collection.features,
                                     training_set.X[:_FORM_CHECK_ROWS])
    return Candidate(trained, dump_model(trained.pipeline), ordered, lineage, evaluation,
                     compiled)


def evaluation_record(trained: TrainedModel, training_set: TrainingSet,
                      warm_from_ms: int | None = None) -> dict[str, Any]:
    """What the report draws and drift detection compares against::

        {"roc": {"fpr", "tpr", "thresholds"}, "pr": {"precision", "recall"},
         "holdout": {"rows", "positives"},
         "profile": {feature: {"edges", "proportions", "missing"}}}

    The profile is of the rows the model was fitted on (``train``'s own split) from
    ``warm_from_ms`` on: before that (one feature window after the first fact) windows are
    still filling, a start-up state recent data never returns to, which drift would flag.
    """
    record: dict[str, Any] = dict(curves(trained.y_true, trained.y_score))
    record["holdout"] = {"rows": int(trained.y_true.size),
                         "positives": int(np.count_nonzero(trained.y_true))}
    train_mask = trained.train_mask
    rows = train_mask
    if warm_from_ms is not None:
        warm = train_mask & (training_set.timestamps >= warm_from_ms)
        rows = warm if warm.sum() >= _MIN_PROFILE_ROWS else train_mask
    profiles = profile_features(training_set.X[rows], training_set.feature_names)
    record["profile"] = {name: profiles[name].to_mapping() for name in sorted(profiles)}
    return record


def _champion_auc(readings: Sequence[Reading], outcomes: Sequence[Outcome],
                  ours: TrainingSet, test_mask: np.ndarray, champion: ChampionRef) -> float:
    """The champion's ROC AUC on the candidate's holdout rows (same outcomes, same split);
    its features are the candidate's own when it has the same collection and window."""
    same = (champion.collection.id, champion.window_ms) == (ours.collection_id, ours.window_ms)
    theirs = ours if same else build_training_set(readings, outcomes, champion.collection,
                                                  champion.window_ms)
    model = champion.pipeline
    true_column = list(model.classes_).index(True)
    scores = model.predict_proba(theirs.X[test_mask])[:, true_column]
    return float(roc_auc(theirs.y[test_mask], scores))
