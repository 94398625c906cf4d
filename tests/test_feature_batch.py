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
from learning.features.collections import CrashStreaks, FeatureCollection
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
