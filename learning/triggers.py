"""Why the learner trains now: new outcomes, a schedule, drift, a broken collection, a request.

Pure: the learner gathers the state (counts from the fact store, the newest drift check
and the trigger log from the drift log) and asks ``due_trigger``; whatever it answers is
recorded before training and written into the model's lineage, so the registry tells
why each version exists.

Drift retrains once per drift episode: an episode is a run of checks above the
threshold against one champion, and it starts again only after a check below the
threshold or a new champion. A retrain (drift or schedule) also needs at least one
outcome the newest model has not seen: training is deterministic, so the same facts
would give the same model again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "COLLECTION", "DRIFT", "KINDS", "OUTCOMES", "REQUEST", "SCHEDULE",
    "DriftCheck", "RetrainState", "Trigger", "due_trigger", "judge_drift", "with_trigger",
]

OUTCOMES = "outcomes"  # enough new outcomes (or the first model)
SCHEDULE = "schedule"  # [learning] retrain_interval_s passed
DRIFT = "drift"  # a feature's PSI above [learning] drift_threshold
COLLECTION = "collection"  # the champion's feature collection has an invalid feature
REQUEST = "request"  # someone asked (rml train)
KINDS = (OUTCOMES, SCHEDULE, DRIFT, COLLECTION, REQUEST)


@dataclass(frozen=True, slots=True)
class Trigger:
    """Why a training run starts: its kind, a sentence, and details (read-only, JSON-able)."""

    kind: str
    reason: str
    detail: Mapping[str, Any] = field(default_factory=dict)  # made read-only on creation

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown trigger kind {self.kind!r}; expected one of {KINDS}")
        object.__setattr__(self, "detail", MappingProxyType(dict(self.detail)))

    def to_mapping(self) -> dict[str, Any]:
        """The lineage form: ``{"kind": ..., "reason": ..., **detail}``."""
        return {**self.detail, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class DriftCheck:
    """One drift check: PSI per feature of the recent window against a champion's profile."""

    at_ms: int
    champion_version: int
    collection_id: int
    window_start_ms: int  # data time: the recent window's span
    window_end_ms: int
    rows: int  # recent feature rows the scores are computed on
    scores: tuple[tuple[str, float], ...]  # (feature, PSI), by feature name
    threshold: float
    episode_started_at_ms: int | None  # the first check of this run above the threshold

    @property
    def max_psi(self) -> float:
        """The largest score (0 when there is none)."""
        return max((score for _, score in self.scores), default=0.0)

    @property
    def above(self) -> bool:
        """Whether this check saw drift."""
        return self.max_psi > self.threshold

    def drifting(self) -> dict[str, float]:
        """The features above the threshold and their scores."""
        return {name: score for name, score in self.scores if score > self.threshold}


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
    return DriftCheck(check.at_ms, champion_version, collection_id, window[0], window[1], rows,
                      check.scores, threshold, started)


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
    drift_retrained: bool  # this drift episode already triggered a retrain


def due_trigger(state: RetrainState) -> Trigger | None:
    """The reason to train now, or None. First match wins: first model, broken collection,
    drift, new outcomes, schedule."""
    if state.outcomes < state.min_outcomes:
        return None
    new = state.outcomes - state.trained_on
    if state.trained_on == 0:
        return Trigger(OUTCOMES, f"first model: {state.outcomes} outcomes",
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
        return Trigger(OUTCOMES, f"{new} new outcomes (every {state.retrain_every_outcomes})",
                       {"outcomes": state.outcomes, "new_outcomes": new})
    interval_ms = state.retrain_interval_s * 1000
    if interval_ms > 0 and new > 0 and (state.last_trigger_ms is None
                                        or state.now_ms - state.last_trigger_ms >= interval_ms):
        return Trigger(SCHEDULE, f"{state.retrain_interval_s:g} s since the last training",
                       {"interval_s": state.retrain_interval_s, "new_outcomes": new})
    return None


def with_trigger(lineage: Mapping[str, Any], trigger: Trigger | None) -> dict[str, Any]:
    """The lineage mapping with ``"trigger"`` set (unchanged when there is none)."""
    out = dict(lineage)
    if trigger is not None:
        out["trigger"] = trigger.to_mapping()
    return out
