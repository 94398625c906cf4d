"""Drift: training profiles, PSI on known distributions, the recent sample, the drift log."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from learning.drift.psi import (
    FeatureProfile,
    drift_scores,
    feature_psi,
    profile_feature,
    profile_features,
    profiles_from_mapping,
    psi,
)
from learning.drift.sample import measure_drift, recent_feature_matrix
from learning.features import default_collections
from learning.features.collections import FeatureRow
from learning.training.triggers import DriftCheck, Trigger, judge_drift
from messages.facts import Reading
from players.simulator import Savanna
from storage import SYSTEM_FILE
from storage.registry import ModelRecord
from storage.sqlite.drift_log import SQLiteDriftLog
from storage.sqlite.training_runs import SQLiteTrainingRuns
from storage.training_runs import TrainingRun

H = 3_600_000


def test_psi_of_identical_distributions_is_zero() -> None:
    assert psi([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]) == 0.0


def test_psi_matches_the_formula_on_a_known_shift() -> None:
    expected, actual = [0.5, 0.5], [0.8, 0.2]
    by_hand = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(0.4158883)


def test_an_emptied_bin_gives_a_large_finite_score_thanks_to_epsilon() -> None:
    score = psi([0.5, 0.5], [1.0, 0.0], eps=1e-4)
    assert math.isfinite(score) and score > 3.0
    assert psi([0.5, 0.5], [1.0, 0.0], eps=1e-2) < score  # a larger floor, a smaller score


def test_psi_refuses_bins_that_do_not_line_up() -> None:
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        psi([0.5, 0.5], [0.2, 0.3, 0.5])


def test_profile_bins_at_training_quantiles() -> None:
    values = np.arange(1000, dtype=np.float64)
    profile = profile_feature(values, bins=10)
    assert len(profile.edges) == 11 and profile.edges[0] == 0.0 and profile.edges[-1] == 999.0
    assert profile.proportions == pytest.approx((0.1,) * 10)
    assert profile.missing == 0.0


def test_missing_values_are_a_bin_of_their_own() -> None:
    values = np.concatenate((np.arange(80.0), np.full(20, np.nan)))
    profile = profile_feature(values, bins=4)
    assert profile.missing == pytest.approx(0.2)
    assert sum(profile.proportions) == pytest.approx(0.8)
    # Recent data where the feature is never missing has drifted by the missing share alone.
    assert feature_psi(profile, np.arange(80.0)) > 0.25


def test_a_constant_feature_has_one_bin() -> None:
    profile = profile_feature(np.full(50, 3.0))
    assert profile.edges == (3.0, 3.0) and profile.proportions == (1.0,)
    assert feature_psi(profile, np.full(10, 3.0)) == 0.0


def test_same_distribution_scores_low_and_a_shifted_one_high() -> None:
    rng = np.random.default_rng(0)
    profile = profile_feature(rng.normal(0, 1, 20_000))
    assert feature_psi(profile, rng.normal(0, 1, 5_000)) < 0.02
    moderate = feature_psi(profile, rng.normal(0.3, 1, 5_000))
    major = feature_psi(profile, rng.normal(1.0, 1, 5_000))
    assert 0.05 < moderate < 0.25 < major
    # Values beyond the training range fall in the outer bins, not out of the count.
    assert feature_psi(profile, np.full(100, 50.0)) > 5


def test_drift_scores_per_feature_by_name() -> None:
    rng = np.random.default_rng(1)
    train = np.column_stack((rng.normal(0, 1, 5000), rng.uniform(0, 1, 5000)))
    profiles = profile_features(train, ("a", "b"))
    recent = np.column_stack((rng.uniform(0, 1, 2000), rng.normal(2, 1, 2000)))
    scores = drift_scores(profiles, recent, ("b", "a"))  # columns in another order
    assert scores["a"] > 1.0 and scores["b"] < 0.05
    assert drift_scores(profiles, np.empty((0, 2)), ("a", "b")) == {}
    with pytest.raises(ValueError, match="no recent values"):
        drift_scores(profiles, recent[:, 1:], ("a",))


def test_a_profile_survives_its_json_form_and_a_malformed_one_is_named() -> None:
    profile = profile_feature(np.random.default_rng(2).normal(0, 1, 1000))
    parsed = profiles_from_mapping({"x": profile.to_mapping()})
    assert parsed == {"x": profile}
    with pytest.raises(ValueError, match="'y'"):
        profiles_from_mapping({"y": {"edges": [0, 1, 2], "proportions": [1.0]}})
    with pytest.raises(ValueError, match="'z'"):
        profiles_from_mapping({"z": {"proportions": [1.0]}})


def _by_location(readings: tuple[Reading, ...]) -> dict[int, list[Reading]]:
    grouped: defaultdict[int, list[Reading]] = defaultdict(list)
    for reading in readings:
        grouped[reading.location_id].append(reading)
    return grouped


def test_recent_sample_covers_each_reporting_location_over_the_window() -> None:
    savanna = Savanna(seed=5, n_locations=6, hours=48)
    _, every = default_collections(0)
    end = savanna.end_ms
    readings = _by_location(savanna.readings())
    readings[99] = []  # a location that never reported is left out
    X = recent_feature_matrix(readings, every.features, 6 * H, end - 24 * H, end, points=48)
    assert X.shape == (6 * 48, len(every.features))
    assert not np.isnan(X[:, every.features.index("animal_estimate")]).any()
    hours = np.degrees(np.arctan2(X[:, every.features.index("hour_sin")],
                                  X[:, every.features.index("hour_cos")])) % 360 / 15
    assert np.histogram(hours, bins=4, range=(0, 24))[0].min() > 0.15 * len(hours)
    again = recent_feature_matrix(readings, every.features, 6 * H, end - 24 * H, end, points=48)
    assert np.array_equal(X, again, equal_nan=True)  # the same facts, the same sample
    empty = recent_feature_matrix({}, every.features, 6 * H, end - H, end)
    assert empty.shape == (0, len(every.features))


def test_a_regime_change_shifts_the_recent_features_past_the_threshold() -> None:
    steady = Savanna(seed=5, n_locations=20, hours=120)
    change = steady.start_ms + 78 * H
    shifted = Savanna(seed=5, n_locations=20, hours=120, regime_change_at_ms=change)
    _, every = default_collections(0)

    def matrix(savanna: Savanna, start: int, end: int) -> np.ndarray:
        return recent_feature_matrix(_by_location(savanna.readings()), every.features, 6 * H,
                                     start, end)

    # Two whole days of the steady savanna (after the first windows filled) as "training".
    profiles = profile_features(matrix(steady, steady.start_ms + 6 * H, change - 24 * H),
                                every.features)
    stable = drift_scores(profiles, matrix(shifted, change - 24 * H, change), every.features)
    moved = drift_scores(profiles, matrix(shifted, shifted.end_ms - 24 * H, shifted.end_ms),
                         every.features)
    assert max(stable.values()) < 0.25
    assert moved["animal_estimate"] > 0.25 and moved["zebra_share"] > 0.25
    assert moved["hour_sin"] < 0.1  # the clock did not change


def _check(at: int, max_psi: float, version: int = 1,
           previous: DriftCheck | None = None) -> DriftCheck:
    return judge_drift({"a": max_psi, "b": 0.01}, 0.25, previous, at_ms=at,
                       champion_version=version, collection_id=1, window=(0, 10), rows=96)


def test_a_drift_episode_runs_from_the_first_check_above_until_one_below() -> None:
    quiet = _check(1, 0.1)
    assert not quiet.above and quiet.episode_started_at_ms is None
    first = _check(2, 0.4, previous=quiet)
    assert first.above and first.episode_started_at_ms == 2 and first.drifting() == {"a": 0.4}
    second = _check(3, 0.9, previous=first)
    assert second.episode_started_at_ms == 2
    calm = _check(4, 0.2, previous=second)
    assert calm.episode_started_at_ms is None
    assert _check(5, 0.5, previous=calm).episode_started_at_ms == 5


def test_a_new_champion_starts_a_new_episode() -> None:
    first = _check(2, 0.4, version=1)
    assert _check(3, 0.4, version=2, previous=first).episode_started_at_ms == 3


def test_profile_is_a_frozen_value() -> None:
    profile = FeatureProfile((0.0, 1.0), (1.0,), 0.0)
    with pytest.raises(AttributeError):
        profile.missing = 0.5  # type: ignore[misc]


def test_a_regime_change_keeps_the_past_and_shifts_herds_and_truth_after_it() -> None:
    steady = Savanna(seed=8, n_locations=10, hours=48)
    change = steady.start_ms + 24 * H
    shifted = Savanna(seed=8, n_locations=10, hours=48, regime_change_at_ms=change)
    before = change - H  # the latent truth moves on a 10-minute grid: keep clear of it
    assert ([r for r in steady.readings() if r.timestamp < before]
            == [r for r in shifted.readings() if r.timestamp < before])
    early = [o for o in steady.outcomes() if o.timestamp < change]
    assert early == [o for o in shifted.outcomes() if o.timestamp < change]
    assert all(steady.true_probability(o) == shifted.true_probability(o) for o in early)

    def mean_animals(savanna: Savanna) -> float:
        return float(np.mean([(r.animals_lower + r.animals_upper) / 2
                              for r in savanna.readings() if r.timestamp >= change + 6 * H]))

    assert 2.5 < mean_animals(shifted) / mean_animals(steady) < 3.5  # MIGRATION triples herds
    late = [o for o in shifted.outcomes() if o.timestamp >= change + 6 * H]
    keys = {o.key for o in late}
    steady_late = [o for o in steady.outcomes() if o.key in keys]
    moved = np.array([shifted.true_probability(o) for o in late])
    kept = np.array([steady.true_probability(o) for o in steady_late])
    assert np.corrcoef(moved, kept)[0, 1] < 0  # more animals now means less success


def test_status_shows_the_newest_check_and_the_last_run(tmp_path: Path) -> None:
    from config.settings import Settings
    from daemon.status import drift_view, render_status

    settings = Settings(data_dir=str(tmp_path))
    view = drift_view(settings)
    assert view["last_check"] is None and view["last_run"] is None  # no learner yet
    log = SQLiteDriftLog(tmp_path / "drift.sqlite")
    runs = SQLiteTrainingRuns(tmp_path / SYSTEM_FILE)
    try:
        log.record_check(_check(7, 0.6, version=3))
        trigger = Trigger("drift", "PSI above 0.25 in a",
                          {"champion_version": 3, "psi": {"a": 0.6}})
        runs.record(TrainingRun("run-1", 8, trigger, "http://127.0.0.1:1", "timeout",
                                "no answer within 2 s", 2.04))
    finally:
        log.close()
        runs.close()
    view = drift_view(settings)
    check = view["last_check"]
    assert check["psi"] == {"a": 0.6, "b": 0.01} and check["above_threshold"]
    assert (check["champion_version"], check["max_psi"], check["at_ms"]) == (3, 0.6, 7)
    run = view["last_run"]
    assert run["trigger"]["kind"] == "drift" and run["trigger"]["champion_version"] == 3
    assert (run["outcome"], run["version"], run["started_at_ms"]) == ("timeout", None, 8)
    assert view["threshold"] == 0.25
    text = render_status({"pgid": 1, "data_dir": str(tmp_path), "actors": [],
                          "ports": {"admin": 1, "ingest": 2, "predict": 3}, "drift": view})
    assert "max PSI 0.600, ABOVE threshold 0.25" in text
    assert "a" in text and "<- drift" in text
    assert ("last training run: drift at 1970-01-01 00:00:00Z: PSI above 0.25 in a -> "
            "timeout: no answer within 2 s (http://127.0.0.1:1, 2.0 s)") in text


def champion_record(profile: Mapping[str, object]) -> ModelRecord:
    evaluation = json.dumps({"profile": profile})
    return ModelRecord(1, 0, "champion", 1, json.dumps({"window_ms": 3 * H}), (), "{}", "sha",
                       "registered", evaluation)


def test_measure_drift_has_nothing_to_judge_without_a_profile_a_collection_or_rows() -> None:
    _, every = default_collections(0)
    row = FeatureRow(every.id, 1, 10 * H, tuple(0.0 for _ in every.features), 10 * H)
    profile = {every.features[0]: profile_feature(np.arange(10.0)).to_mapping()}
    never = lambda *_: ()  # noqa: E731  (no readings anywhere)
    assert measure_drift(champion_record({}), every, [row], never, H, 24 * H) is None
    assert measure_drift(champion_record(profile), None, [row], never, H, 24 * H) is None
    assert measure_drift(champion_record(profile), every, [], never, H, 24 * H) is None
    # A profiled feature the champion's collection no longer has cannot be judged.
    with pytest.raises(ValueError, match="no recent values"):
        gone = {"no_such_feature": profile_feature(np.arange(10.0)).to_mapping()}
        measure_drift(champion_record(gone), every, [row], _one_reading, H, 24 * H)


def _one_reading(location: int, start_ms: int, end_ms: int) -> list[Reading]:
    return [Reading("s1", location, "r1", end_ms - H, 2, 5, 0.25)]
