"""How close a learned model comes to the savanna's hidden truth (the best achievable AUC).

``python -m players.ceiling [seed ...]`` prints, per seed, feature collection and model
type, the holdout ROC AUC of the learned model next to the AUC of the true probabilities
on the same holdout outcomes, with the time each step took.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from config.job import JobConfiguration, ModelType
from learning.features.collections import FeatureCollection
from learning.features.compute import default_collections
from learning.training.metrics import best_achievable_auc
from learning.training.pipeline import TrainedModel, split_by_location, train
from learning.training.sets import TrainingSet, build_training_set
from messages.facts import Outcome
from players.simulator import Savanna

__all__ = ["holdout_best_auc", "holdout_ceiling", "main"]


def holdout_best_auc(savanna: Savanna, job: Mapping[str, Any],
                     outcomes: Sequence[Outcome] | None = None) -> float:
    """The best achievable ROC AUC on the outcomes a model with ``job`` (its JSON mapping)
    was tested on, of ``outcomes`` (default: all the savanna's).

    The split is deterministic (by location, seeded), so the simulator's hidden
    truth can be scored on exactly the learner's holdout.
    """
    ordered = sorted(savanna.outcomes() if outcomes is None else outcomes,
                     key=lambda o: (o.timestamp, o.location_id, o.outcome_id))
    locations = np.array([o.location_id for o in ordered], dtype=np.int64)
    labels = np.array([o.label for o in ordered], dtype=bool)
    _, test = split_by_location(locations, int(job["seed"]), float(job["test_fraction"]), labels)
    return savanna.best_auc([o for o, keep in zip(ordered, test, strict=True) if keep])


def holdout_ceiling(
    savanna: Savanna, training_set: TrainingSet, model: TrainedModel
) -> tuple[float, float]:
    """(learned AUC, best achievable AUC) on the model's holdout outcomes."""
    job = model.job
    _, test_mask = split_by_location(
        training_set.location_ids, job.seed, job.test_fraction, training_set.y
    )
    by_time_and_place = {(o.timestamp, o.location_id): o for o in savanna.outcomes()}
    truth = np.array(
        [
            savanna.true_probability(by_time_and_place[(int(t), int(loc))])
            for t, loc in zip(
                training_set.timestamps[test_mask],
                training_set.location_ids[test_mask],
                strict=True,
            )
        ]
    )
    return model.metric("roc_auc"), best_achievable_auc(training_set.y[test_mask], truth)


def _report(seed: int, collections: tuple[FeatureCollection, ...]) -> None:
    start = time.perf_counter()
    savanna = Savanna(seed=seed)
    simulated = time.perf_counter() - start
    print(
        f"seed {seed}: {len(savanna.readings())} readings, {len(savanna.outcomes())} outcomes "
        f"simulated in {simulated:.2f} s"
    )
    for collection in collections:
        start = time.perf_counter()
        training_set = build_training_set(
            savanna.readings(), savanna.outcomes(), collection, JobConfiguration().window_ms
        )
        joined = time.perf_counter() - start
        print(
            f"  collection {collection.id} ({len(collection.features)} features), "
            f"joined in {joined:.3f} s"
        )
        for model_type in ModelType:
            job = JobConfiguration(model_type=model_type, seed=seed)
            start = time.perf_counter()
            model = train(training_set, job)
            fitted = time.perf_counter() - start
            learned, best = holdout_ceiling(savanna, training_set, model)
            print(
                f"    {model_type.value:<20} learned {learned:.3f}  best {best:.3f}  "
                f"gap {best - learned:+.3f}  (train {model.n_train}, test {model.n_test}, "
                f"split {model.split}, {fitted:.2f} s)"
            )


def main(argv: list[str] | None = None) -> None:
    """Print the ceiling report for the seeds given (default: 7)."""
    seeds = [int(arg) for arg in (sys.argv[1:] if argv is None else argv)] or [7]
    collections = default_collections(0)
    for seed in seeds:
        _report(seed, collections)


if __name__ == "__main__":
    main()
