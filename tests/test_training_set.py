"""Point-in-time training sets: no leakage, same features as online rows, fast enough."""

from __future__ import annotations

import numpy as np
import pytest

from learning.features import compute_row, default_collections
from learning.training.sets import build_training_set
from messages.facts import Outcome, Reading
from players.simulator import Savanna

HOUR = 3_600_000
WINDOW = 6 * HOUR
COLLECTION = default_collections(0)[1]


@pytest.fixture(scope="module")
def savanna() -> Savanna:
    return Savanna(seed=3, n_locations=12, hours=48)


def test_readings_at_or_after_an_outcome_never_change_its_row(savanna: Savanna) -> None:
    readings, outcomes = list(savanna.readings()), list(savanna.outcomes())
    before = build_training_set(readings, outcomes, COLLECTION, WINDOW)
    target = outcomes[len(outcomes) // 2]
    t = target.timestamp
    # Flood the target's location with wild readings at t and after t.
    leaks = [
        Reading(f"leak-{k}", target.location_id, f"x{k}", t + k * 60_000, 900, 1000, 1.0)
        for k in range(20)
    ]
    after = build_training_set(readings + leaks, outcomes, COLLECTION, WINDOW)
    unaffected = before.timestamps <= t
    np.testing.assert_array_equal(before.X[unaffected], after.X[unaffected])
    row = int(
        np.flatnonzero((before.timestamps == t) & (before.location_ids == target.location_id))[0]
    )
    np.testing.assert_array_equal(before.X[row], after.X[row])
    # ...while a later outcome at that location does see them.
    later = (after.timestamps > t + 10 * 60_000) & (after.location_ids == target.location_id)
    later &= after.timestamps < t + WINDOW
    assert later.any()
    assert not np.array_equal(before.X[later], after.X[later])


def test_late_arriving_reading_with_an_earlier_timestamp_is_used(savanna: Savanna) -> None:
    outcome = Outcome(
        location_id=1, outcome_id="o", timestamp=savanna.start_ms + 10 * HOUR, label=True
    )
    early = [r for r in savanna.readings() if r.timestamp < outcome.timestamp - WINDOW]
    late = Reading("late", 1, "l1", outcome.timestamp - HOUR, 500, 500, 0.5)
    with_late = build_training_set([*early, late], [outcome], COLLECTION, WINDOW)
    without = build_training_set(early, [outcome], COLLECTION, WINDOW)
    count = COLLECTION.features.index("reading_count")
    assert without.X[0, count] == 0
    assert with_late.X[0, count] == 1


def test_rows_equal_online_rows_at_each_outcome_time(savanna: Savanna) -> None:
    readings, outcomes = savanna.readings(), savanna.outcomes()
    ts = build_training_set(readings, outcomes, COLLECTION, WINDOW)
    for i in range(0, len(ts), max(1, len(ts) // 25)):
        loc, at = int(ts.location_ids[i]), int(ts.timestamps[i])
        online = compute_row(COLLECTION, readings, loc, at, WINDOW, computed_at_ms=at)
        np.testing.assert_allclose(ts.X[i], online.values, rtol=1e-9, atol=1e-9)


def test_training_set_does_not_depend_on_arrival_order(savanna: Savanna) -> None:
    readings, outcomes = list(savanna.readings()), list(savanna.outcomes())
    rng = np.random.default_rng(0)
    shuffled_r = [readings[i] for i in rng.permutation(len(readings))]
    shuffled_o = [outcomes[i] for i in rng.permutation(len(outcomes))]
    a = build_training_set(readings, outcomes, COLLECTION, WINDOW)
    b = build_training_set(shuffled_r, shuffled_o, COLLECTION, WINDOW)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.location_ids, b.location_ids)
    assert a.feature_names == COLLECTION.features and a.collection_id == COLLECTION.id


def test_training_set_is_read_only(savanna: Savanna) -> None:
    ts = build_training_set(savanna.readings(), savanna.outcomes(), COLLECTION, WINDOW)
    with pytest.raises(ValueError):
        ts.X[0, 0] = 1.0


def test_fifty_thousand_readings_give_one_row_per_outcome() -> None:
    # Timing is a benchmark's business (never asserted here): ~0.1 s on the dev box.
    savanna = Savanna(seed=5, n_locations=70, hours=120, outcomes_per_hour=0.6)
    readings, outcomes = savanna.readings(), savanna.outcomes()
    assert len(readings) >= 50_000 and len(outcomes) >= 4_500
    ts = build_training_set(readings, outcomes, COLLECTION, WINDOW)
    assert len(ts) == len(outcomes)
