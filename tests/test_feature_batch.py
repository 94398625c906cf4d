"""A batch of new facts -> rows and verdicts (``learning.features.batch``), without an actor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from learning.features import (
    ORIGINAL_FEATURES,
    FeatureType,
    Windows,
    default_collections,
    register_feature_type,
)
from learning.features.batch import compute_batch
from learning.features.collections import CrashStreaks, FeatureCollection, NanRates
from messages.facts import Reading
from tests.test_features import DAY0, HOUR, WINDOW, reading


def _below_range(w: Windows) -> np.ndarray:
    return -1.0 - w.count.astype(np.float64)  # its type says [0, 1e6]


def _crash(w: Windows) -> np.ndarray:
    raise RuntimeError("broken on purpose")


# Feature types only (no collection declared: nothing else in this process sees them).
register_feature_type(FeatureType("batch_test_range", "outside its range", 0.0, 1e6, 0.5,
                                  False, _below_range))
register_feature_type(FeatureType("batch_test_crash", "raises", 0.0, 1.0, 0.5, False, _crash))
COLLECTIONS: tuple[FeatureCollection, ...] = (
    *default_collections(DAY0),
    FeatureCollection(2, DAY0 + 1, (*ORIGINAL_FEATURES, "batch_test_range")),
    FeatureCollection(3, DAY0 + 2, (*ORIGINAL_FEATURES, "batch_test_crash")),
)
READINGS = [reading(DAY0 + h * HOUR, 3 + h, 9 + h, sensor=sensor, location=location)
            for location in (1, 2, 3) for h in range(1, 4) for sensor in ("a", "b")]


def read_location(location_id: int, start: int, end: int) -> Sequence[Reading]:
    return [r for r in READINGS if r.location_id == location_id and start <= r.timestamp < end]


def test_each_location_gets_a_row_per_usable_collection_as_of_its_newest_reading() -> None:
    batch = compute_batch(READINGS, read_location, COLLECTIONS[:2], frozenset(), WINDOW,
                          DAY0, CrashStreaks(limit=3))
    assert batch.locations == 3 and not batch.invalid and not batch.crashes
    assert sorted((r.location_id, r.collection_id) for r in batch.rows) == [
        (loc, c) for loc in (1, 2, 3) for c in (0, 1)]
    assert {r.as_of_ms for r in batch.rows} == {DAY0 + 3 * HOUR + 1}


def test_a_feature_crashing_past_the_limit_is_judged_and_its_rows_are_dropped() -> None:
    streaks = CrashStreaks(limit=2)
    batch = compute_batch(READINGS, read_location, COLLECTIONS, frozenset(), WINDOW, DAY0,
                          streaks)
    assert [c.in_a_row for c in batch.crashes] == [1, 2]  # judged at the 2nd, then not computed
    assert batch.invalid["batch_test_crash"].startswith("crashed 2 times in a row")
    assert "batch_test_range" in batch.invalid  # values outside its type's range
    kept = {r.collection_id for r in batch.rows}
    assert kept == {0, 1}  # the broken collections' rows are not kept


def test_invalid_features_are_not_computed_at_all() -> None:
    batch = compute_batch(READINGS, read_location, COLLECTIONS, frozenset({"batch_test_crash"}),
                          WINDOW, DAY0, CrashStreaks(limit=2))
    assert not batch.crashes and "batch_test_crash" not in batch.invalid


# After a quiet spell longer than the window: each location's window holds its one new
# reading, from one sensor, so trend and sensor_disagreement are NaN in every row.
QUIET = DAY0 + 3 * HOUR + 2 * WINDOW
SPARSE = [reading(QUIET + i, 4, 10, sensor="a", location=location)
          for i, location in enumerate((1, 2, 3))]
LATER = [reading(QUIET + h * HOUR + i, 4 + h, 10 + h, sensor=sensor, location=location)
         for h in (1, 2) for i, location in enumerate((1, 2, 3)) for sensor in ("a", "b")]


def read_all(location_id: int, start: int, end: int) -> Sequence[Reading]:
    return [r for r in (*READINGS, *SPARSE, *LATER)
            if r.location_id == location_id and start <= r.timestamp < end]


def test_one_sparse_batch_does_not_judge_a_nan_rate_but_enough_rows_do() -> None:
    collections = COLLECTIONS[:2]
    judged_alone = compute_batch(SPARSE, read_all, collections, frozenset(), WINDOW, DAY0,
                                 CrashStreaks(limit=3))  # no tally: the batch's own rate
    assert {"trend", "sensor_disagreement"} <= judged_alone.invalid.keys()

    rates = NanRates(min_rows=6)
    sparse = compute_batch(SPARSE, read_all, collections, frozenset(), WINDOW, DAY0,
                           CrashStreaks(limit=3), rates)
    assert not sparse.invalid  # 3 rows of collection 1: not enough to judge
    assert {r.collection_id for r in sparse.rows} == {0, 1}  # its rows are kept (NaN: missing)
    later = compute_batch(LATER, read_all, collections, frozenset(), WINDOW, DAY0,
                          CrashStreaks(limit=3), rates)
    assert not later.invalid  # 3 of 6 rows NaN over both batches: within trend's 0.8

    # A feature NaN in row after row is still judged, once enough rows have come.
    rates = NanRates(min_rows=6)
    first = compute_batch(SPARSE, read_all, collections, frozenset(), WINDOW, DAY0,
                          CrashStreaks(limit=3), rates)
    second = compute_batch(SPARSE, read_all, collections, frozenset(), WINDOW, DAY0,
                           CrashStreaks(limit=3), rates)
    assert not first.invalid
    assert second.invalid["sensor_disagreement"] == "NaN rate 1.000 above 0.8 (over 6 rows)"
    assert "trend" in second.invalid


def test_nan_rates_are_taken_over_the_latest_batches_holding_enough_rows() -> None:
    rates = NanRates(min_rows=10)
    assert rates.rate(1, "trend", 4, 4) is None
    assert rates.rate(1, "trend", 4, 0) is None
    assert rates.rate(1, "trend", 4, 0) == (4 / 12, 12)
    assert rates.rate(1, "trend", 4, 0) == (0.0, 12)  # the first batch is no longer needed
    assert rates.rate(1, "trend", 50, 25) == (0.5, 50)  # a large batch alone
    assert rates.rate(2, "trend", 4, 4) is None  # per collection
