"""Why the learner trains now: new outcomes, a schedule, drift, a broken collection, a request.

Pure: the learner gathers the state (counts from the fact store, the newest drift check from
the drift log, earlier runs from the training runs) and asks ``due_trigger``; whatever it
answers is recorded with the run and written into the model's lineage, so the registry
tells why each version exists.

Drift retrains once per drift episode: an episode is a run of checks above the
threshold against one champion, and it starts again only after a check below the
threshold or a new champion. Only a run that registered a version uses the episode up: one
that timed out or failed leaves it to retrain. A retrain (drift or schedule) also needs at
least one outcome the newest model has not seen: training is deterministic, so the same
facts would give the same model again.

After runs through an external trainer time out or fail, automatic runs wait
(``retry_backoff_s``: the trainer's timeout, doubling with each failure in a row), so a
trainer that is down is not called on every new batch of outcomes; a request
(``rml train``) still runs at once.

``Trigger``, ``DriftCheck`` and the trigger kinds are defined in ``storage.records`` (the
training runs and the drift log keep them, and storage sits below learning) and re-exported
here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from storage.records import (
    COLLECTION,
    DRIFT,
    KINDS,
    NEW_OUTCOMES,
    REQUEST,
    SCHEDULE,
    DriftCheck,
    Trigger,
)

__all__ = [
    "COLLECTION", "DRIFT", "KINDS", "MAX_BACKOFF_S", "NEW_OUTCOMES", "REQUEST", "SCHEDULE",
    "DriftCheck", "RetrainState", "Trigger", "due_trigger", "judge_drift", "retry_at_ms",
    "retry_backoff_s", "with_trigger",
]

#: The longest wait after failed external runs (unless the trainer's timeout is longer).
MAX_BACKOFF_S = 3600.0


def judge_drift(scores: Mapping[str, float], threshold: float, previous: DriftCheck | None,
                *, at_ms: int, champion_version: int, collection_id: int,
                window: tuple[int, int], rows: int) -> DriftCheck:
    """This check, with its episode: it continues the previous check's when both are above
    the threshold against the same champion, else starts at this check (or is None)."""
    check = DriftCheck(at_ms, champion_version, collection_id, window[0], window[1], rows,
                       tuple(sorted((str(k), float(v)) for k, v in scores.items())),
                       threshold, None)
    if not check.above:
        return check
    started = at_ms
    if (previous is not None and previous.above
            and previous.champion_version == champion_version
            and previous.episode_started_at_ms is not None):
        started = previous.episode_started_at_ms
    return replace(check, episode_started_at_ms=started)


@dataclass(frozen=True, slots=True)
class RetrainState:
    """What ``due_trigger`` decides on, gathered by the learner."""

    outcomes: int  # outcomes in the fact store
    trained_on: int  # outcomes the newest model saw (0: no model yet)
    min_outcomes: int
    retrain_every_outcomes: int
    stale_collection: bool  # the champion's collection has an invalid feature
    now_ms: int
    last_trigger_ms: int | None  # when the last training run started (None: no record)
    retrain_interval_s: float  # 0: no schedule
    drift: DriftCheck | None  # the newest check against the current champion
    drift_retrained: bool  # a drift run in this episode already registered a version
    retry_at_ms: int | None = None  # no automatic run before this (a failing external trainer)


def due_trigger(state: RetrainState) -> Trigger | None:
    """The reason to train now, or None. First match wins: first model, broken collection,
    drift, new outcomes, schedule. Nothing while a failing external trainer's backoff lasts."""
    if state.outcomes < state.min_outcomes:
        return None
    if state.retry_at_ms is not None and state.now_ms < state.retry_at_ms:
        return None
    new = state.outcomes - state.trained_on
    if state.trained_on == 0:
        return Trigger(NEW_OUTCOMES, f"first model: {state.outcomes} outcomes",
                       {"outcomes": state.outcomes, "new_outcomes": new})
    if state.stale_collection:
        return Trigger(COLLECTION, "the champion's feature collection has an invalid feature")
    drift = state.drift
    if drift is not None and drift.above and not state.drift_retrained and new > 0:
        drifting = drift.drifting()
        return Trigger(DRIFT, "PSI above {:g} in {}".format(drift.threshold,
                                                              ", ".join(sorted(drifting))),
                       {"psi": dict(drift.scores), "max_psi": drift.max_psi,
                        "threshold": drift.threshold, "champion_version": drift.champion_version,
                        "checked_at_ms": drift.at_ms,
                        "episode_started_at_ms": drift.episode_started_at_ms,
                        "new_outcomes": new})
    if new >= state.retrain_every_outcomes:
        return Trigger(NEW_OUTCOMES, f"{new} new outcomes (every {state.retrain_every_outcomes})",
                       {"outcomes": state.outcomes, "new_outcomes": new})
    interval_ms = state.retrain_interval_s * 1000
    if interval_ms > 0 and new > 0 and (state.last_trigger_ms is None
                                        or state.now_ms - state.last_trigger_ms >= interval_ms):
        return Trigger(SCHEDULE, f"{state.retrain_interval_s:g} s since the last training",
                       {"interval_s": state.retrain_interval_s, "new_outcomes": new})
    return None


def retry_backoff_s(failures: int, timeout_s: float) -> float:
    """How long automatic runs wait after ``failures`` external runs in a row timed out or
    failed: the trainer's timeout, doubled for each further failure, at most
    ``MAX_BACKOFF_S`` (or the timeout, if that is longer); 0 with no failure."""
    if failures <= 0:
        return 0.0
    return min(timeout_s * 2.0 ** min(failures - 1, 32), max(timeout_s, MAX_BACKOFF_S))


def retry_at_ms(failures_ended_at_ms: tuple[int, ...], timeout_s: float) -> int | None:
    """When the next automatic run may start, given when each external run of the current
    failure streak ended (newest first); None with no failure."""
    if not failures_ended_at_ms:
        return None
    wait_s = retry_backoff_s(len(failures_ended_at_ms), timeout_s)
    return failures_ended_at_ms[0] + round(wait_s * 1000)


def with_trigger(lineage: Mapping[str, Any], trigger: Trigger | None) -> dict[str, Any]:
    """The lineage mapping with ``"trigger"`` set (unchanged when there is none)."""
    out = dict(lineage)
    if trigger is not None:
        out["trigger"] = trigger.to_mapping()
    return out
