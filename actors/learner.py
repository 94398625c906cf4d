"""Learner: trains a model candidate on new outcomes, a schedule, drift, or on request.

Owns: nothing in memory that matters; how far it has trained is read back
from the registry's lineage, drift checks from the drift log, earlier runs from the
training runs (``storage.training_runs``).
Receives: ``FactsRecorded`` hints and a timer (check whether to train, see
``learning.training.triggers``), a drift timer (PSI of the recent window against the champion's
training profile, recorded in the drift log), ``CollectionSwitched`` (the champion may
now be on an invalid collection), ``Forwarded(TrainRequest)`` (train now, ``rml train``).
Every run is one row of the training runs (trigger, trainer, outcome, seconds, version),
whatever its end; a registered version also has its trigger in its lineage.
Trains on the active collection (the newest with no invalid feature); when the
champion's collection has an invalid feature it trains on the active one
without waiting for the next scheduled run.
Fits locally or through an external trainer (``[learning] trainer``), waiting at most
``trainer_timeout_s``; either way it scores the model on its own holdout. A trainer that
times out or fails leaves the champion as it is, and automatic runs back off from it.
Sends: ``ModelCandidate`` (a registered version) to the publisher, which
answers whoever asked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actors import metrics
from actors.base import Worker
from config.job import JobConfiguration
from learning.drift.sample import measure_drift
from learning.features.collections import FeatureCollection, usable_collection_ids, valid_collection
from learning.features.compute import (
    FeatureCrashed,
    register_collections,
)
from learning.models.lineage import outcomes_seen
from learning.training.triggers import (
    REQUEST,
    RetrainState,
    Trigger,
    due_trigger,
    judge_drift,
    retry_at_ms,
    with_trigger,
)
from messages.facts import Outcome, Reading
from messages.protocol import (
    CollectionSwitched,
    FactsNoted,
    FactsRecorded,
    Forwarded,
    Init,
    ModelCandidate,
    TrainRequest,
    TrainResult,
)
from storage import ModelRecord, Stores
from storage.backend import ACTOR_CONNECT_WAIT_S, StoreBackend
from storage.drift_log import DriftLog
from storage.training_runs import (
    FAILED,
    REGISTERED,
    SKIPPED,
    TIMEOUT,
    TrainingRun,
    TrainingRuns,
)

if TYPE_CHECKING:  # scikit-learn (through these) is imported on the first training only
    from learning.training.candidate import Candidate, ChampionRef

__all__ = ["Learner", "NoModel"]


@dataclass(frozen=True, slots=True)
class NoModel:
    """Why a run registered nothing: its outcome (``skipped``, ``timeout``, ``failed``), the
    error for the training runs, and the reason for whoever asked."""

    outcome: str
    error: str
    reason: str


class Learner(Worker):
    """Facts -> point-in-time training set -> pipeline -> registered candidate."""

    role = "learner"

    def __init__(self) -> None:
        super().__init__()
        self.stores: Stores | None = None
        self.backend: StoreBackend | None = None
        self.runs: TrainingRuns | None = None
        self.drift_log: DriftLog | None = None
        self.trained_on = 0  # outcomes seen by the newest registered model
        self.attempted_at = 0  # outcomes count at the last attempt (failed or not)
        self.attempted_on = -1  # the collection of that attempt

    def on_start(self, init: Init) -> None:
        # Kept across the retries of a start that waits for the store (``actors.base``).
        self.backend = self.backend or StoreBackend(init.settings,
                                                    connect_wait_s=ACTOR_CONNECT_WAIT_S)
        self.stores = self.backend.stores()
        self.runs = self.backend.training_runs()
        features = self.stores.features
        configured, problems = register_collections(init.settings.features, features,
                                                    int(time.time() * 1000))
        for what, error in problems.items():
            self.log.error("feature_collection_refused", what=what, error=error)
        if configured:
            self.log.info("configured_collections",
                          collection_ids={what: c.id for what, c in configured.items()})
        for record in self.stores.registry.versions():
            try:
                self.trained_on = max(self.trained_on, outcomes_seen(record.lineage))
            except (ValueError, KeyError, TypeError):
                continue
        self.attempted_at = self.trained_on
        self.drift_log = self.backend.drift_log()
        self.wakeupAfter(init.settings.learning.check_interval_s, payload="check")
        if init.settings.learning.drift_check_interval_s > 0:
            self.wakeupAfter(init.settings.learning.drift_check_interval_s, payload="drift")

    def on_stop(self) -> None:
        if self.backend is not None:
            self.backend.close()

    def default_job(self) -> JobConfiguration:
        """The job configured in ``[learning]``."""
        assert self.settings is not None
        learning = self.settings.learning
        return JobConfiguration.from_mapping({"model_type": learning.model_type,
                                              "seed": learning.seed,
                                              "window_ms": learning.feature_window_ms})

    def on_FactsRecorded(self, msg: FactsRecorded, sender: Any) -> None:  # noqa: N802
        self.send(sender, FactsNoted(msg.sequence))  # the collector may hint again
        if msg.outcomes:
            self._maybe_train()

    def on_CollectionSwitched(self, msg: CollectionSwitched, sender: Any) -> None:  # noqa: N802
        self._maybe_train()

    def on_timer(self, payload: Any) -> None:
        assert self.settings is not None
        if payload == "check":
            try:
                self._maybe_train()
            finally:
                self.wakeupAfter(self.settings.learning.check_interval_s, payload="check")
        elif payload == "drift":
            try:
                self._check_drift()
            finally:
                self.wakeupAfter(self.settings.learning.drift_check_interval_s, payload="drift")

    def on_Forwarded(self, msg: Forwarded, sender: Any) -> None:  # noqa: N802
        request = msg.message
        if isinstance(request, TrainRequest):
            trigger = Trigger(REQUEST, "asked to train" + (" (forced)" if request.force else ""))
            self._start_training(request.correlation_id, trigger,
                                 request.job or self.default_job(), request.force, msg.reply_to)

    def _maybe_train(self) -> None:
        assert self.stores is not None and self.settings is not None
        learning = self.settings.learning
        outcomes = self.stores.facts.counts().outcomes
        if outcomes < learning.min_outcomes:
            return
        collections = self.stores.features.collections()
        invalid = self.stores.features.invalid_features()
        active = valid_collection(collections, invalid)
        champion = self.stores.registry.champion()
        # Follow the active collection: a champion on an invalid collection cannot be served
        # (predictors fall back), so a model on the active one is due now.
        stale = (champion is not None and champion.feature_collection_id
                 not in usable_collection_ids(collections, invalid))
        if (outcomes, active.id) == (self.attempted_at, self.attempted_on):
            return  # tried on exactly these outcomes and collection already
        trigger = due_trigger(self._retrain_state(outcomes, champion, stale))
        if trigger is not None:
            self._start_training(uuid.uuid4().hex, trigger, self.default_job(), False, None)

    def _retrain_state(self, outcomes: int, champion: ModelRecord | None,
                       stale: bool) -> RetrainState:
        """What ``due_trigger`` needs, from the stores, the drift log and the runs."""
        assert self.drift_log is not None and self.runs is not None
        assert self.settings is not None
        learning = self.settings.learning
        drift = self.drift_log.latest_check()
        if drift is not None and (champion is None or drift.champion_version != champion.version):
            drift = None  # checked against an earlier champion: says nothing about this one
        retrained = (drift is not None and drift.episode_started_at_ms is not None
                     and self.runs.retrained_in_episode(drift.champion_version,
                                                        drift.episode_started_at_ms))
        last = self.runs.runs(1)
        retry_at = None
        if learning.trainer != "local":
            failures = self.runs.failures_in_a_row(learning.trainer)
            retry_at = retry_at_ms(tuple(run.ended_at_ms for run in failures),
                                   learning.trainer_timeout_s)
        return RetrainState(outcomes, self.trained_on, learning.min_outcomes,
                            learning.retrain_every_outcomes, stale, int(time.time() * 1000),
                            last[0].started_at_ms if last else None,
                            learning.retrain_interval_s, drift, retrained, retry_at)

    def _start_training(self, correlation_id: str, trigger: Trigger, job: JobConfiguration,
                        force: bool, reply_to: Any) -> None:
        """Train, record the run (one row, however it ends), then tell: a registered version
        goes to the publisher (which answers ``reply_to``), anything else to ``reply_to``."""
        self.log.info("training_triggered", kind=trigger.kind, reason=trigger.reason,
                      correlation_id=correlation_id)
        started_ms, clock = int(time.time() * 1000), time.monotonic()

        def record(outcome: str, error: str, version: int | None) -> None:
            assert self.runs is not None and self.settings is not None
            metrics.TRAINING_RUNS.labels(trigger.kind, outcome).inc()
            self.runs.record(TrainingRun(correlation_id, started_ms, trigger,
                                         self.settings.learning.trainer, outcome, error,
                                         time.monotonic() - clock, version))

        try:
            ended = self._train(correlation_id, job, trigger)
        except Exception as exc:
            # Recorded once and answered: a redelivery would run the whole training again
            # (and record it twice) only to fail the same way.
            self.log.exception("training_failed", correlation_id=correlation_id)
            ended = NoModel(FAILED, f"{type(exc).__name__}: {exc}",
                            f"training failed: {type(exc).__name__}: {exc}")
        if isinstance(ended, int):
            record(REGISTERED, "", ended)
            message = ModelCandidate(correlation_id, ended, force, reply_to)
            for address in self.peers.of("publisher")[:1]:
                self.send(address, message)
            # No publisher up right now: it judges pending candidates from the registry on start.
            return
        record(ended.outcome, ended.error, None)
        if reply_to is not None:
            self.send(reply_to, TrainResult(correlation_id, None, False, (), ended.reason))

    def _check_drift(self) -> None:
        """PSI per feature of the recent window against the champion's training profile;
        recorded in the drift log, then a training check (drift may be a trigger)."""
        assert self.stores is not None and self.drift_log is not None
        assert self.settings is not None
        learning = self.settings.learning
        champion = self.stores.registry.champion()
        if champion is None:
            return
        collection = next((c for c in self.stores.features.collections()
                           if c.id == champion.feature_collection_id), None)
        latest = () if collection is None else self.stores.features.latest_rows(collection.id)
        try:
            measure = measure_drift(champion, collection, latest,
                                    self.stores.facts.readings_for_location,
                                    learning.feature_window_ms, learning.drift_window_ms)
        except (FeatureCrashed, ValueError) as exc:
            self.log.warning("drift_check_failed", champion_version=champion.version,
                             error=str(exc))
            return
        if measure is None or collection is None:
            return
        check = judge_drift(measure.scores, learning.drift_threshold,
                            self.drift_log.latest_check(), at_ms=int(time.time() * 1000),
                            champion_version=champion.version, collection_id=collection.id,
                            window=measure.window, rows=measure.rows)
        self.drift_log.record_check(check)
        for name, score in check.scores:
            metrics.DRIFT_PSI.labels(name).set(score)
        (self.log.warning if check.above else self.log.info)(
            "drift_checked", champion_version=champion.version, rows=check.rows,
            max_psi=round(check.max_psi, 4), threshold=check.threshold,
            psi={name: round(score, 4) for name, score in check.scores},
            episode_started_at_ms=check.episode_started_at_ms)
        self._maybe_train()

    def _train(self, correlation_id: str, job: JobConfiguration,
               trigger: Trigger) -> int | NoModel:
        """Fit a candidate and register it: its version, or why there is none."""
        assert self.stores is not None
        stores = self.stores
        started = time.monotonic()
        readings = stores.facts.all_readings()
        outcomes = stores.facts.all_outcomes()
        fitting = time.monotonic()
        fitted = self._fit(readings, outcomes, job, correlation_id)
        if not isinstance(fitted, NoModel):
            metrics.FIT_SECONDS.labels(job.model_type.value).observe(time.monotonic() - fitting)
        if isinstance(fitted, NoModel):
            self.log.warning("training_skipped", outcome=fitted.outcome, reason=fitted.reason,
                             outcomes=len(outcomes), correlation_id=correlation_id)
            return fitted
        candidate, collection = fitted
        version = stores.registry.register(
            feature_collection_id=collection.id, job=job.to_mapping(),
            metrics=dict(candidate.metrics),
            lineage=with_trigger(json.loads(candidate.lineage.to_json()), trigger),
            artifact=candidate.artifact, created_at_ms=int(time.time() * 1000),
            evaluation=candidate.evaluation, compiled=candidate.compiled,
        )
        self.trained_on = max(self.trained_on, len(outcomes))
        self.log.info("candidate_registered", version=version, collection_id=collection.id,
                      model_type=job.model_type.value, outcomes=len(outcomes),
                      roc_auc=dict(candidate.metrics).get("roc_auc"),
                      seconds=round(time.monotonic() - started, 3),
                      correlation_id=correlation_id)
        return version

    def _fit(self, readings: Sequence[Reading], outcomes: Sequence[Outcome],
             job: JobConfiguration, correlation_id: str,
             ) -> tuple[Candidate, FeatureCollection] | NoModel:
        """A candidate on the active collection, or why not. A feature that crashes here,
        before the feature generator's verdict, is left out of this run's choice; an
        external trainer's timeout or failure ends the run."""
        assert self.stores is not None and self.settings is not None
        from learning.training.candidate import make_candidate
        from learning.training.external import (
            ExternalTrainerError,
            ExternalTrainerTimeout,
            fit_step,
        )
        from learning.training.pipeline import TrainingError

        learning = self.settings.learning
        fit = fit_step(learning.trainer, learning.trainer_token, learning.trainer_timeout_s)
        features = self.stores.features
        collections = features.collections()
        crashed: set[str] = set()
        champion = self._champion()
        while True:
            collection = valid_collection(collections, features.invalid_features() | crashed)
            self.attempted_at, self.attempted_on = len(outcomes), collection.id
            try:
                return (make_candidate(readings, outcomes, collection, job, champion, fit=fit),
                        collection)
            except TrainingError as exc:
                return NoModel(SKIPPED, str(exc), str(exc))
            except ExternalTrainerError as exc:
                outcome = TIMEOUT if isinstance(exc, ExternalTrainerTimeout) else FAILED
                self.log.warning("external_training_failed", trainer=exc.trainer,
                                 outcome=outcome, error=exc.reason,
                                 seconds=round(exc.seconds, 3), collection_id=collection.id,
                                 correlation_id=correlation_id)
                return NoModel(outcome, exc.reason, f"{exc}; the champion stays")
            except FeatureCrashed as exc:
                self.log.warning("training_feature_crashed", feature=exc.feature,
                                 collection_id=collection.id, error=exc.error)
                if exc.feature in collection.features:
                    if exc.feature in crashed:  # the fallback collection itself crashes
                        return NoModel(FAILED, str(exc), str(exc))
                    crashed.add(exc.feature)
                elif champion is not None:
                    champion = None  # the champion's features crash: it is not comparable
                else:
                    return NoModel(FAILED, str(exc), str(exc))

    def _champion(self) -> ChampionRef | None:
        assert self.stores is not None
        record = self.stores.registry.champion()
        if record is None:
            return None
        features = self.stores.features
        every = features.collections()
        collections: dict[int, FeatureCollection] = {c.id: c for c in every}
        collection = collections.get(record.feature_collection_id)
        if collection is None or collection.id not in usable_collection_ids(
                every, features.invalid_features()):
            return None  # its features are broken: it cannot be scored, only replaced
        from learning.models.artifacts import load_model
        from learning.training.candidate import ChampionRef

        pipeline = load_model(self.stores.registry.artifact(record.version))
        window_ms = json.loads(record.job).get("window_ms", self.default_job().window_ms)
        return ChampionRef(record.version, pipeline, collection, int(window_ms))
