"""Retraining triggers: first model, broken collection, drift (once per episode), outcomes,
schedule; the backoff after a failing external trainer; and the trigger written into the
lineage."""

from __future__ import annotations

from dataclasses import replace

import pytest

from learning.training.triggers import (
    MAX_BACKOFF_S,
    NEW_OUTCOMES,
    DriftCheck,
    RetrainState,
    Trigger,
    due_trigger,
    judge_drift,
    retry_at_ms,
    retry_backoff_s,
    with_trigger,
)

NOW = 1_800_000_000_000


def _drift(max_psi: float, version: int = 2) -> DriftCheck:
    return judge_drift({"animal_estimate": max_psi, "hour_sin": 0.01}, 0.25, None, at_ms=NOW,
                       champion_version=version, collection_id=1, window=(0, 1), rows=480)


STEADY = RetrainState(outcomes=1500, trained_on=1400, min_outcomes=500,
                      retrain_every_outcomes=1000, stale_collection=False, now_ms=NOW,
                      last_trigger_ms=NOW - 5_000, retrain_interval_s=0.0, drift=None,
                      drift_retrained=False)


def test_nothing_is_due_in_a_steady_state() -> None:
    assert due_trigger(STEADY) is None


def test_too_few_outcomes_train_nothing_whatever_else_holds() -> None:
    state = replace(STEADY, outcomes=400, trained_on=0, drift=_drift(3.0),
                    stale_collection=True)
    assert due_trigger(state) is None


def test_the_first_model_is_trained_once_enough_outcomes_exist() -> None:
    trigger = due_trigger(replace(STEADY, outcomes=500, trained_on=0))
    assert trigger is not None and trigger.kind == "outcomes"
    assert trigger.detail["outcomes"] == 500 and "first model" in trigger.reason


def test_every_n_new_outcomes_trains() -> None:
    trigger = due_trigger(replace(STEADY, outcomes=2400))
    assert trigger is not None and trigger.kind == "outcomes"
    assert trigger.detail["new_outcomes"] == 1000


def test_a_champion_on_a_broken_collection_is_replaced_first() -> None:
    trigger = due_trigger(replace(STEADY, stale_collection=True, drift=_drift(1.0)))
    assert trigger is not None and trigger.kind == "collection"


def test_drift_above_the_threshold_trains_with_the_scores_in_the_trigger() -> None:
    trigger = due_trigger(replace(STEADY, drift=_drift(0.9)))
    assert trigger is not None and trigger.kind == "drift"
    assert trigger.detail["psi"] == {"animal_estimate": 0.9, "hour_sin": 0.01}
    assert trigger.detail["threshold"] == 0.25 and trigger.detail["champion_version"] == 2
    assert trigger.detail["episode_started_at_ms"] == NOW
    assert "animal_estimate" in trigger.reason and "hour_sin" not in trigger.reason


def test_drift_retrains_once_per_episode() -> None:
    assert due_trigger(replace(STEADY, drift=_drift(0.9), drift_retrained=True)) is None


def test_a_drift_run_that_registered_nothing_leaves_the_episode_to_retrain() -> None:
    # The learner's drift_retrained counts only runs that registered a version
    # (tests/test_training_runs.py); after a timed-out run the same episode is due again,
    # once the backoff from the failing trainer has passed.
    failed_at = NOW - 1_000
    state = replace(STEADY, drift=_drift(0.9), drift_retrained=False,
                    retry_at_ms=retry_at_ms((failed_at,), 30.0))
    assert due_trigger(state) is None
    trigger = due_trigger(replace(state, now_ms=failed_at + 30_000))
    assert trigger is not None and trigger.kind == "drift"


def test_drift_below_the_threshold_is_no_trigger() -> None:
    assert due_trigger(replace(STEADY, drift=_drift(0.2))) is None


def test_drift_waits_for_an_outcome_the_model_has_not_seen() -> None:
    waiting = replace(STEADY, trained_on=1500, drift=_drift(0.9))
    assert due_trigger(waiting) is None  # the same facts would give the same model
    trigger = due_trigger(replace(waiting, outcomes=1501))
    assert trigger is not None and trigger.kind == "drift"


def test_the_schedule_trains_after_its_interval_when_something_is_new() -> None:
    scheduled = replace(STEADY, retrain_interval_s=60.0)
    assert due_trigger(scheduled) is None  # 5 s since the last run
    later = replace(scheduled, now_ms=NOW + 60_000)
    trigger = due_trigger(later)
    assert trigger is not None and trigger.kind == "schedule"
    assert trigger.detail["interval_s"] == 60.0
    assert due_trigger(replace(later, trained_on=1500)) is None  # nothing new: no run
    assert due_trigger(replace(later, retrain_interval_s=0.0)) is None  # schedule off


def test_automatic_runs_wait_out_the_backoff_of_a_failing_trainer() -> None:
    first_model = replace(STEADY, outcomes=600, trained_on=0)
    waiting = replace(first_model, retry_at_ms=NOW + 1)
    assert due_trigger(waiting) is None
    assert due_trigger(replace(waiting, stale_collection=True, trained_on=100)) is None
    trigger = due_trigger(replace(waiting, now_ms=NOW + 1))
    assert trigger is not None and trigger.kind == NEW_OUTCOMES == "outcomes"


def test_the_backoff_starts_at_the_trainers_timeout_and_doubles_up_to_a_cap() -> None:
    assert [retry_backoff_s(n, 60.0) for n in range(5)] == [0.0, 60.0, 120.0, 240.0, 480.0]
    assert retry_backoff_s(10, 60.0) == MAX_BACKOFF_S
    assert retry_backoff_s(10_000, 60.0) == MAX_BACKOFF_S  # no overflow on a long streak
    assert retry_backoff_s(3, 2 * MAX_BACKOFF_S) == 2 * MAX_BACKOFF_S  # never below timeout
    assert retry_at_ms((), 60.0) is None
    # From the end of the newest failure; three in a row: four times the timeout.
    assert retry_at_ms((9_000, 5_000, 1_000), 2.5) == 9_000 + 10_000


def test_a_trigger_goes_into_the_lineage_and_refuses_unknown_kinds() -> None:
    trigger = Trigger("schedule", "60 s since the last training", {"interval_s": 60.0})
    lineage = with_trigger({"facts": {"outcomes": 3}}, trigger)
    assert lineage == {"facts": {"outcomes": 3},
                       "trigger": {"kind": "schedule", "reason": "60 s since the last training",
                                   "interval_s": 60.0}}
    assert with_trigger({"facts": {}}, None) == {"facts": {}}
    with pytest.raises(ValueError, match="unknown trigger kind"):
        Trigger("whim", "felt like it")
    with pytest.raises(TypeError):
        trigger.detail["interval_s"] = 1.0  # type: ignore[index]
