"""Feature types, online rows, value validation and the collection fallback (validCollection)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learning.features import (
    FEATURE_TYPES,
    ORIGINAL_FEATURES,
    compute_row,
    default_collections,
    validate_values,
)
from learning.features.collections import (
    FALLBACK_COLLECTION_ID,
    FeatureCollection,
    valid_collection,
)
from messages.facts import Reading

HOUR = 3_600_000
DAY0 = 1_704_067_200_000  # midnight UTC
WINDOW = 6 * HOUR
ALL = default_collections(DAY0)[1]


def reading(
    ts: int,
    lower: int,
    upper: int,
    zebras: float = 0.5,
    sensor: str = "a",
    location: int = 1,
    rid: str | None = None,
) -> Reading:
    return Reading(sensor, location, rid or f"{sensor}-{ts}", ts, lower, upper, zebras)


def row_dict(readings: list[Reading], as_of: int, location: int = 1) -> dict[str, float]:
    row = compute_row(ALL, readings, location, as_of, WINDOW, computed_at_ms=as_of)
    return dict(zip(ALL.features, row.values, strict=True))


def test_default_collections_are_original_features_then_all_features() -> None:
    fallback, full = default_collections(DAY0)
    assert fallback.id == FALLBACK_COLLECTION_ID
    assert (
        fallback.features
        == ORIGINAL_FEATURES
        == ("animal_estimate", "zebra_share", "reading_count")
    )
    assert full.id == 1 and full.features == tuple(FEATURE_TYPES)
    assert {"interval_width", "trend", "hour_sin", "hour_cos", "sensor_disagreement"} <= set(
        full.features
    )


def test_window_features_summarise_the_readings_before_as_of() -> None:
    as_of = DAY0 + 6 * HOUR
    readings = [
        reading(DAY0 + 1 * HOUR, 8, 12, 0.2, "a"),  # midpoint 10, width 4
        reading(DAY0 + 3 * HOUR, 18, 22, 0.4, "b"),  # midpoint 20, width 4
        reading(DAY0 + 5 * HOUR, 28, 32, 0.6, "a"),  # midpoint 30, width 4
    ]
    f = row_dict(readings, as_of)
    assert f["animal_estimate"] == pytest.approx(20.0)
    assert f["interval_width"] == pytest.approx(4.0)
    assert f["zebra_share"] == pytest.approx(0.4)
    assert f["reading_count"] == 3
    assert f["trend"] == pytest.approx(5.0)  # +10 animals every 2 hours
    assert f["latest_estimate"] == pytest.approx(30.0)
    # sensor a averages 20, sensor b 20: they agree
    assert f["sensor_disagreement"] == pytest.approx(0.0)
    assert f["hour_sin"] == pytest.approx(1.0)  # 06:00 UTC
    assert f["hour_cos"] == pytest.approx(0.0, abs=1e-12)


def test_window_excludes_readings_at_or_after_as_of_and_older_than_the_window() -> None:
    as_of = DAY0 + 10 * HOUR
    inside = reading(as_of - WINDOW, 10, 10)  # exactly at the window start: included
    readings = [
        inside,
        reading(as_of - WINDOW - 1, 1000, 1000),
        reading(as_of, 1000, 1000),
        reading(as_of + HOUR, 1000, 1000),
        reading(as_of - HOUR, 30, 30, location=2),  # another location
    ]
    f = row_dict(readings, as_of)
    assert f["reading_count"] == 1
    assert f["animal_estimate"] == 10.0


def test_empty_window_gives_nan_values_and_zero_count() -> None:
    f = row_dict([], DAY0 + 12 * HOUR)
    assert f["reading_count"] == 0
    for name in (
        "animal_estimate",
        "zebra_share",
        "interval_width",
        "trend",
        "sensor_disagreement",
        "latest_estimate",
    ):
        assert math.isnan(f[name]), name
    assert f["hour_cos"] == pytest.approx(-1.0)


def test_sensor_disagreement_is_the_spread_of_per_sensor_means() -> None:
    readings = [
        reading(DAY0 + HOUR, 10, 10, sensor="a"),
        reading(DAY0 + 2 * HOUR, 30, 30, sensor="b"),
    ]
    assert row_dict(readings, DAY0 + 3 * HOUR)["sensor_disagreement"] == pytest.approx(10.0)


def test_online_row_does_not_depend_on_reading_order() -> None:
    rng = np.random.default_rng(1)
    readings = [
        reading(DAY0 + int(t), int(lo), int(lo) + 5, float(z), sensor=f"s{k % 3}", rid=str(k))
        for k, (t, lo, z) in enumerate(
            zip(rng.integers(0, WINDOW, 50), rng.integers(0, 50, 50), rng.random(50), strict=True)
        )
    ]
    shuffled = list(readings)
    rng.shuffle(shuffled)
    assert row_dict(readings, DAY0 + WINDOW) == pytest.approx(
        row_dict(shuffled, DAY0 + WINDOW), nan_ok=True
    )


def test_validate_values_reports_out_of_range_nan_rate_and_infinities() -> None:
    collection = FeatureCollection(2, DAY0, ("zebra_share", "reading_count", "animal_estimate"))
    matrix = np.array([[0.5, 3, 10.0], [1.7, 4, np.nan], [0.2, 2, np.nan], [0.1, 1, np.inf]])
    problems = validate_values(collection, matrix)
    assert set(problems) == {"zebra_share", "animal_estimate"}
    assert "outside" in problems["zebra_share"]
    assert "non-finite" in problems["animal_estimate"]
    matrix[3, 2] = np.nan  # now 3 of 4 NaN, above the 0.5 allowed
    assert "NaN rate" in validate_values(collection, matrix)["animal_estimate"]


def test_validate_values_accepts_rows_within_their_types_rules() -> None:
    readings = [reading(DAY0 + h * HOUR, 10 + h, 12 + h, sensor=f"s{h % 2}") for h in range(6)]
    rows = [compute_row(ALL, readings, 1, DAY0 + h * HOUR, WINDOW, 0) for h in range(3, 7)]
    assert validate_values(ALL, rows) == {}
    assert validate_values(ALL, []) == {}


def test_newest_valid_collection_wins() -> None:
    c0, c1 = default_collections(DAY0)
    c2 = FeatureCollection(2, DAY0 + 1, ("animal_estimate", "trend"))
    assert valid_collection([c0, c1, c2], invalid_features=()) == c2


def test_invalid_feature_forces_fallback_to_an_earlier_collection() -> None:
    c0 = default_collections(DAY0)[0]
    c1 = FeatureCollection(1, DAY0, ("animal_estimate", "interval_width"))
    c2 = FeatureCollection(2, DAY0 + 1, ("animal_estimate", "trend"))
    # trend is NaN in every row: above its allowed NaN rate
    matrix = np.array([[5.0, np.nan], [6.0, np.nan], [7.0, np.nan], [8.0, np.nan]])
    invalid = validate_values(c2, matrix)
    assert set(invalid) == {"trend"}
    assert valid_collection([c0, c1, c2], invalid) == c1


def test_no_valid_collection_falls_back_to_collection_zero() -> None:
    c0, c1 = default_collections(DAY0)
    chosen = valid_collection([c1, c0], invalid_features={"trend", "hour_sin"})
    assert chosen.id == FALLBACK_COLLECTION_ID


# --- plugins, crashes and usable collections ------------------------------------------------


def test_plugin_registers_feature_types_and_declares_collections_idempotently() -> None:
    import importlib

    import tests.broken_features as plugin
    from learning.features import declared_collections, feature_type, load_plugins

    assert load_plugins(["tests.broken_features"]) == {}
    importlib.reload(plugin)  # the same definitions again: the registry agrees
    assert feature_type("broken_range") is not None and "broken_range" not in FEATURE_TYPES
    ids = [c.id for c in declared_collections()]
    assert ids[:2] == [0, 1] and {2, 3} <= set(ids)
    assert plugin.CRASH_COLLECTION.created_at > default_collections(0)[1].created_at


def test_plugin_cannot_redefine_features_or_collections() -> None:
    import tests.broken_features  # noqa: F401
    from learning.features import FeatureType, declare_collection, register_feature_type

    with pytest.raises(ValueError, match="built in"):
        register_feature_type(FeatureType("trend", "", 0, 1, 0, False, lambda w: w.count))
    with pytest.raises(ValueError, match="already registered"):
        register_feature_type(FeatureType("broken_range", "", 0, 1, 0, False, lambda w: w.count))
    with pytest.raises(ValueError, match="original"):
        register_feature_type(FeatureType("new_original", "", 0, 1, 0, True, lambda w: w.count))
    with pytest.raises(ValueError, match="reserved"):
        declare_collection(1, ("trend",))
    with pytest.raises(ValueError, match="unknown features"):
        declare_collection(90, ("no_such_feature",))
    with pytest.raises(ValueError, match="already declared"):
        declare_collection(2, ("trend",))


def test_a_plugin_that_fails_to_import_is_reported_not_raised() -> None:
    from learning.features import load_plugins

    failed = load_plugins(["tests.no_such_plugin_module"])
    assert list(failed) == ["tests.no_such_plugin_module"]
    assert "ModuleNotFoundError" in failed["tests.no_such_plugin_module"]


def test_a_crashing_feature_costs_only_the_rows_of_collections_naming_it() -> None:
    from learning.features import compute_rows
    from tests.broken_features import CRASH_COLLECTION, RANGE_COLLECTION

    c0, c1 = default_collections(0)
    readings = [reading(DAY0 + HOUR, 8, 12), reading(DAY0 + 2 * HOUR, 4, 6)]
    rows, crashes = compute_rows((c0, c1, RANGE_COLLECTION, CRASH_COLLECTION), readings, 1,
                                 DAY0 + 3 * HOUR, WINDOW, DAY0)
    assert [r.collection_id for r in rows] == [0, 1, 2]
    assert list(crashes) == ["broken_crash"] and "RuntimeError" in crashes["broken_crash"]
    alone = compute_row(c1, readings, 1, DAY0 + 3 * HOUR, WINDOW, DAY0)
    assert np.array_equal(rows[1].values, alone.values, equal_nan=True)
    assert validate_values(RANGE_COLLECTION, [rows[2]]).keys() == {"broken_range"}


def test_compute_matrix_names_the_feature_that_crashed() -> None:
    from learning.features import FeatureCrashed, compute_matrix, summarise_windows
    from tests.broken_features import CRASH_COLLECTION

    empty = np.zeros(0)
    windows = summarise_windows(empty, empty, empty, empty, empty, np.array([DAY0]), WINDOW)
    with pytest.raises(FeatureCrashed) as caught:
        compute_matrix(CRASH_COLLECTION.features, windows)
    assert caught.value.feature == "broken_crash"
    with pytest.raises(FeatureCrashed, match="no feature type"):
        compute_matrix(("never_registered",), windows)


def test_crash_streaks_judge_after_the_limit_in_a_row_and_reset_on_success() -> None:
    from learning.features.collections import CrashStreaks

    streaks = CrashStreaks(limit=3)
    assert [streaks.crashed("f"), streaks.crashed("f")] == [False, False]
    streaks.succeeded("f")
    assert streaks.streak("f") == 0
    assert [streaks.crashed("f") for _ in range(3)] == [False, False, True]
    assert streaks.streak("g") == 0


def test_usable_collections_are_the_valid_ones_else_the_fallback_alone() -> None:
    from learning.features.collections import usable_collection_ids

    c0, c1 = default_collections(DAY0)
    c2 = FeatureCollection(2, DAY0 + 1, ("animal_estimate", "trend"))
    assert usable_collection_ids([c0, c1, c2], ()) == {0, 1, 2}
    assert usable_collection_ids([c0, c1, c2], {"trend"}) == {0}
    assert usable_collection_ids([c0, c1, c2], {"zebra_share"}) == {2}
    assert usable_collection_ids([c0, c1, c2], {"animal_estimate"}) == {0}


def test_newly_invalid_names_crashed_and_out_of_rule_features_once() -> None:
    from learning.features import newly_invalid
    from learning.features.collections import FeatureCollection, FeatureRow

    collection = FeatureCollection(7, 0, ("zebra_share", "reading_count"))
    rows = [FeatureRow(7, 1, 10, (5.0, 3.0), 10)]  # a share of 5 breaks its [0, 1] range
    found = newly_invalid([collection], rows, frozenset(),
                          {"trend": "crashed 3 times in a row"})
    assert set(found) == {"trend", "zebra_share"}
    assert newly_invalid([collection], rows, frozenset({"zebra_share"}), {}) == {}
