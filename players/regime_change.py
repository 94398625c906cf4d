"""A regime change to play against a daemon: the savanna before and after, and how a
registered model scores on either regime's holdout (the end-to-end test and
``bench/learn.py`` share it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from learning.features.collections import FeatureCollection
from learning.models.artifacts import load_model
from learning.training.metrics import roc_auc
from learning.training.pipeline import split_by_location
from learning.training.sets import build_training_set
from messages.facts import Outcome, Reading
from players.ceiling import holdout_best_auc
from players.simulator import Savanna
from storage.registry import ModelRecord

__all__ = ["RegimeChange", "holdout_auc"]

_MS_PER_HOUR = 3_600_000


@dataclass(frozen=True, slots=True)
class RegimeChange:
    """A savanna whose hidden truth shifts (``players.regime.MIGRATION``) ``hours_after``
    hours before its end; the facts before and after the change."""

    savanna: Savanna
    change_ms: int

    @classmethod
    def build(cls, end_ms: int, hours_before: int = 72, hours_after: int = 72, seed: int = 7,
              n_locations: int = 40) -> RegimeChange:
        """The scenario ending at ``end_ms`` (e.g. the last midnight)."""
        change = end_ms - hours_after * _MS_PER_HOUR
        savanna = Savanna(seed=seed, n_locations=n_locations, hours=hours_before + hours_after,
                          end_ms=end_ms, regime_change_at_ms=change)
        return cls(savanna, change)

    def readings(self, after: bool) -> tuple[Reading, ...]:
        """The readings before (or from) the change."""
        return tuple(r for r in self.savanna.readings() if (r.timestamp >= self.change_ms) == after)

    def outcomes(self, after: bool) -> tuple[Outcome, ...]:
        """The outcomes before (or from) the change."""
        return tuple(o for o in self.savanna.outcomes() if (o.timestamp >= self.change_ms) == after)


def holdout_auc(record: ModelRecord, artifact: bytes, scenario: RegimeChange,
                after: bool) -> tuple[float, float, int]:
    """(the model's ROC AUC, the best achievable AUC, rows) on the holdout part (the learner's
    own split by location) of one regime's outcomes."""
    lineage: dict[str, Any] = json.loads(record.lineage)
    job = json.loads(record.job)
    collection = FeatureCollection(record.feature_collection_id, 0,
                                   tuple(lineage["feature_collection"]["features"]))
    outcomes = scenario.outcomes(after)
    training = build_training_set(scenario.savanna.readings(), outcomes, collection,
                                  int(job["window_ms"]))
    _, test = split_by_location(training.location_ids, int(job["seed"]),
                                float(job["test_fraction"]), training.y)
    model = load_model(artifact)
    true_column = list(model.classes_).index(True)
    scores = model.predict_proba(training.X[test])[:, true_column]
    return (roc_auc(training.y[test], scores), holdout_best_auc(scenario.savanna, job, outcomes),
            int(np.count_nonzero(test)))
