"""Champion and challenger: a candidate serving in shadow before its promotion. Pure.

A candidate that passes the gate may first serve in shadow for ``[learning]
shadow_requests`` requests: for each request the champion answered, the shadow model's
prediction is computed as well and tallied, never returned. The predictor's edge only
``offer``s a request (a deque append); the actor computes the shadow predictions later
(``run_pending``), off the client's answer. On the champion's feature collection the shadow
is given the very row the champion was asked with (``RowMemo``); on another collection, the
location's latest row there, read by the actor through its own store when the shadow runs.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from learning.features.collections import FeatureRow
from learning.serving.answer import LoadedModel, RowLookup, ServingSnapshot, feature_values, predict
from messages.codec import PredictQuery
from messages.protocol import Prediction, PredictionError
from storage.shadow import ShadowCounts, ShadowTrial

__all__ = [
    "CandidatePlan",
    "RowMemo",
    "ShadowPrediction",
    "ShadowRunner",
    "TrialVerdict",
    "judge_trial",
    "plan_candidate",
    "trial_progress",
]


class CandidatePlan(StrEnum):
    """What the publisher does with a judged candidate."""

    PROMOTE = "promote"
    SHADOW = "shadow"
    REJECT = "reject"


def plan_candidate(passed_gate: bool, has_champion: bool, forced: bool,
                   shadow_requests: int) -> CandidatePlan:
    """Reject what the gate refused; promote at once the first model (there is no champion to
    shadow), a forced one (the operator asked for it in production) or any when shadowing is
    off (``shadow_requests == 0``); else serve it in shadow first."""
    if not passed_gate:
        return CandidatePlan.REJECT
    if shadow_requests <= 0 or not has_champion or forced:
        return CandidatePlan.PROMOTE
    return CandidatePlan.SHADOW


def trial_progress(trial: ShadowTrial | None) -> str:
    """How far a shadow trial has got, for the status log and the logs."""
    if trial is None:
        return "no request"
    counts = trial.counts
    agreed = f", {counts.agreed / counts.served:.1%} agreed" if counts.served else ""
    return f"{counts.served}/{trial.target} requests{agreed}"


@dataclass(frozen=True, slots=True)
class TrialVerdict:
    """How a shadow trial ends: ``PROMOTE`` or ``REJECT``, and why (for the status log)."""

    plan: CandidatePlan
    reason: str


def judge_trial(trial: ShadowTrial, max_error_rate: float) -> TrialVerdict | None:
    """Reject a shadow asked ``target`` times or more of which more than ``max_error_rate``
    failed; else promote it once it has served ``target`` requests; else None (it goes on).

    Errors count as requests asked, so a shadow that cannot answer (say, the features
    clients send are not its own) ends after about ``target`` requests instead of waiting
    for ever; one within the rate serves its target in at most ``target / (1 -
    max_error_rate)`` requests. ``max_error_rate`` 1 never rejects.
    """
    counts = trial.counts
    asked = counts.served + counts.errors
    if asked >= trial.target and counts.errors > max_error_rate * asked:
        return TrialVerdict(CandidatePlan.REJECT, (
            f"shadow rejected: {counts.errors} of {asked} shadow predictions failed "
            f"({counts.errors / asked:.1%}, above the shadow_max_error_rate of "
            f"{max_error_rate:.1%}); {trial_progress(trial)}"))
    if counts.served >= trial.target:
        plural = "s" if counts.errors > 1 else ""
        failed = f"; {counts.errors} shadow prediction{plural} failed" if counts.errors else ""
        return TrialVerdict(CandidatePlan.PROMOTE, (
            f"shadow finished: {trial_progress(trial)} with the champion's label{failed}"))
    return None


class RowMemo:
    """A feature lookup that remembers the rows it read, for the shadow model asked later.

    Called on the thread that answers the champion, through that thread's store. The shadow,
    asked later on the actor's thread, gets ``replay(lookup)``: the remembered rows (so on the
    champion's collection it sees the very row the champion was asked with), and for a row
    never read here (the shadow is on another collection) ``lookup``, the actor's own store.
    """

    __slots__ = ("_lookup", "_rows")

    def __init__(self, lookup: RowLookup) -> None:
        self._lookup = lookup
        # Created on the first call only: a query with explicit features never looks up.
        self._rows: dict[tuple[int, int], FeatureRow | None] | None = None

    def __call__(self, collection_id: int, location_id: int) -> FeatureRow | None:
        key = (collection_id, location_id)
        rows = self._rows
        if rows is None:
            rows = self._rows = {}
        elif key in rows:
            return rows[key]
        row = rows[key] = self._lookup(collection_id, location_id)
        return row

    def replay(self, lookup: RowLookup) -> RowLookup:
        """A lookup that answers the rows remembered and asks ``lookup`` for any other (it
        never calls this memo's own lookup, which belongs to another thread)."""
        rows = self._rows or {}

        def replayed(collection_id: int, location_id: int) -> FeatureRow | None:
            key = (collection_id, location_id)
            return rows[key] if key in rows else lookup(collection_id, location_id)

        return replayed


@dataclass(frozen=True, slots=True)
class ShadowPrediction:
    """One shadow prediction beside the champion's answer (``probability`` None: it failed,
    and ``error`` says why)."""

    version: int
    champion: Prediction
    probability: float | None
    error: str = ""

    @property
    def agreed(self) -> bool:
        """Whether the shadow model gave the champion's label."""
        return self.probability is not None and (self.probability >= 0.5) == self.champion.label


def _shadow_predict(model: LoadedModel, query: PredictQuery, lookup: RowLookup,
                    answer: Prediction) -> ShadowPrediction:
    try:
        values = feature_values(model, query, lookup, answer.correlation_id)
        if isinstance(values, PredictionError):
            return ShadowPrediction(model.version, answer, None, values.reason)
        return ShadowPrediction(model.version, answer, float(model.predict_one(values)))
    except Exception as exc:  # a shadow model's failure must never reach a client
        return ShadowPrediction(model.version, answer, None, f"{type(exc).__name__}: {exc}")


class ShadowRunner:
    """Requests the champion answered, waiting for the shadow model; tallies per version.

    ``offer`` is the only call on the hot path (any thread); ``run_pending`` and ``counts``
    belong to the actor's thread. At most ``capacity`` requests wait: past that the oldest
    are dropped (counted in ``dropped``), so a stalled actor never grows the predictor.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self._pending: collections.deque[tuple[LoadedModel, PredictQuery, RowMemo,
                                               Prediction]] = collections.deque(maxlen=capacity)
        self._dropped = 0
        self._lock = threading.Lock()
        self._counts: dict[int, ShadowCounts] = {}
        self._differences: dict[int, float] = {}  # sum of |shadow - champion| probabilities

    def answer(self, snapshot: ServingSnapshot, query: PredictQuery, lookup: RowLookup,
               correlation_id: str = "", *, deadline_ms: float | None = None,
               on_fallback: Callable[[str], None] | None = None,
               ) -> Prediction | PredictionError:
        """The champion's answer (``learning.serving.answer.predict``). With a shadow in the
        snapshot, the rows the champion was asked with are remembered and the request is
        queued for the shadow, asked later off the answer's path."""
        shadow = snapshot.shadow
        if shadow is None:
            return predict(snapshot, query, lookup, correlation_id, deadline_ms=deadline_ms,
                           on_fallback=on_fallback)
        rows = RowMemo(lookup)
        result = predict(snapshot, query, rows, correlation_id, deadline_ms=deadline_ms,
                         on_fallback=on_fallback)
        if isinstance(result, Prediction):
            self.offer(shadow, query, rows, result)
        return result

    def offer(self, model: LoadedModel, query: PredictQuery, rows: RowMemo,
              answer: Prediction) -> None:
        """Queue a request the champion answered (through ``rows``) for ``model`` (the
        shadow) to answer too."""
        if len(self._pending) == self._pending.maxlen:
            self._dropped += 1  # approximate under a race between threads: a tally, no more
        self._pending.append((model, query, rows, answer))

    def run_pending(self, lookup: RowLookup,
                    on_each: Callable[[ShadowPrediction], None] | None = None,
                    budget_s: float | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> int:
        """Ask the shadow model for the waiting requests, oldest first, for at most
        ``budget_s`` seconds (None: all of them); how many ran. Rows the champion was not
        asked with come from ``lookup`` (the calling thread's store). The budget keeps the
        actor's thread free for its messages (and its heartbeat) however slow the shadow."""
        done = 0
        deadline = None if budget_s is None else clock() + budget_s
        while deadline is None or clock() < deadline:
            try:
                model, query, rows, answer = self._pending.popleft()
            except IndexError:
                break
            outcome = _shadow_predict(model, query, rows.replay(lookup), answer)
            done += 1
            with self._lock:
                old = self._counts.get(outcome.version, ShadowCounts())
                self._counts[outcome.version] = ShadowCounts(
                    old.served + (outcome.probability is not None),
                    old.agreed + outcome.agreed,
                    old.errors + (outcome.probability is None))
                if outcome.probability is not None:
                    self._differences[outcome.version] = self._differences.get(
                        outcome.version, 0.0) + abs(outcome.probability - answer.probability)
            if on_each is not None:
                on_each(outcome)
        return done

    def versions(self) -> tuple[int, ...]:
        """The versions this runner has made shadow predictions for."""
        with self._lock:
            return tuple(self._counts)

    def counts(self, version: int) -> ShadowCounts:
        """Shadow predictions made for ``version`` by this runner so far (cumulative)."""
        with self._lock:
            return self._counts.get(version, ShadowCounts())

    def mean_difference(self, version: int) -> float | None:
        """Mean |shadow - champion| probability over ``version``'s shadow predictions."""
        with self._lock:
            served = self._counts.get(version, ShadowCounts()).served
            return self._differences.get(version, 0.0) / served if served else None

    @property
    def dropped(self) -> int:
        """Requests offered but never run because too many were waiting."""
        return self._dropped

    @property
    def waiting(self) -> int:
        """Requests offered and not run yet."""
        return len(self._pending)
