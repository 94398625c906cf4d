"""Point-in-time training sets: each outcome joined with its location's features just before it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from learning.features.collections import FeatureCollection
from learning.features.compute import compute_matrix, reading_arrays, summarise_windows
from messages.facts import Outcome, Reading

__all__ = ["TrainingSet", "build_training_set"]


@dataclass(frozen=True, slots=True, eq=False)
class TrainingSet:
    """Feature matrix and labels, one row per outcome, in (timestamp, location, id) order.

    The arrays are read-only.
    """

    X: np.ndarray  # float64, (n, len(feature_names)); NaN where a window was empty
    y: np.ndarray  # bool, (n,)
    location_ids: np.ndarray  # int64, (n,)
    timestamps: np.ndarray  # int64, (n,): the outcome times, i.e. each row's as_of
    feature_names: tuple[str, ...]
    collection_id: int
    window_ms: int = 0  # the trailing window the features were computed over

    def __len__(self) -> int:
        return int(self.y.shape[0])


def build_training_set(
    readings: Iterable[Reading],
    outcomes: Iterable[Outcome],
    collection: FeatureCollection,
    window_ms: int,
) -> TrainingSet:
    """Join every outcome at time t with its location's features from readings in [t - window, t).

    Readings at or after t never reach the row of an outcome at t, whatever order they
    arrived in. Readings are sorted once per location and windows found by binary search,
    so the cost is O((readings + outcomes) log readings).
    """
    by_location: defaultdict[int, list[Reading]] = defaultdict(list)
    for reading in readings:
        by_location[reading.location_id].append(reading)
    ordered = sorted(outcomes, key=lambda o: (o.timestamp, o.location_id, o.outcome_id))
    n = len(ordered)
    location_ids = np.fromiter((o.location_id for o in ordered), dtype=np.int64, count=n)
    timestamps = np.fromiter((o.timestamp for o in ordered), dtype=np.int64, count=n)
    y = np.fromiter((o.label for o in ordered), dtype=bool, count=n)
    X = np.empty((n, len(collection.features)), dtype=np.float64)

    for location in np.unique(location_ids):
        rows = np.flatnonzero(location_ids == location)
        arrays = reading_arrays(by_location.get(int(location), []))
        windows = summarise_windows(*arrays, timestamps[rows], window_ms)
        X[rows] = compute_matrix(collection.features, windows)

    for array in (X, y, location_ids, timestamps):
        array.setflags(write=False)
    return TrainingSet(
        X=X,
        y=y,
        location_ids=location_ids,
        timestamps=timestamps,
        feature_names=tuple(collection.features),
        collection_id=collection.id,
        window_ms=window_ms,
    )
