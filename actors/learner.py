"""Learner: trains a model candidate when enough new outcomes exist, or on request.

Owns: nothing in memory that matters; how far it has trained is read back
from the registry's lineage.
Receives: ``FactsRecorded`` hints and a timer (check whether to train),
``Forwarded(TrainRequest)`` (train now, e.g. ``rml train``).
Sends: ``ModelCandidate`` (a registered version) to the publisher, which
answers whoever asked.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from actors.base import Worker
from config.job import JobConfiguration
from learning.artifacts import load_model
from learning.candidate import ChampionRef, make_candidate
from learning.collections import valid_collection
from learning.features import default_collections
from learning.pipeline import TrainingError
from messages.protocol import (
    FactsRecorded,
    Forwarded,
    Init,
    ModelCandidate,
    TrainRequest,
    TrainResult,
)
from storage import Stores, open_sqlite_stores

__all__ = ["Learner"]


class Learner(Worker):
    """Facts -> point-in-time training set -> pipeline -> registered candidate."""

    role = "learner"

    def __init__(self) -> None:
        super().__init__()
        self.stores: Stores | None = None
        self.trained_on = 0  # outcomes seen by the newest registered model
        self.attempted_at = 0  # outcomes count at the last attempt (failed or not)

    def on_start(self, init: Init) -> None:
        self.stores = open_sqlite_stores(init.settings.data_path,
                                         busy_timeout_s=init.settings.storage.busy_timeout_s)
        for collection in default_collections(0):  # fixed: every process registers the same
            self.stores.features.register_collection(collection)
        for record in self.stores.registry.versions():
            try:
                seen = json.loads(record.lineage)["facts"]["outcomes"]
            except (ValueError, KeyError, TypeError):
                continue
            self.trained_on = max(self.trained_on, int(seen))
        self.attempted_at = self.trained_on
        self.wakeupAfter(init.settings.learning.check_interval_s, payload="check")

    def on_stop(self) -> None:
        if self.stores is not None:
            self.stores.close()

    def default_job(self) -> JobConfiguration:
        """The job configured in ``[learning]``."""
        assert self.settings is not None
        learning = self.settings.learning
        return JobConfiguration.from_mapping({"model_type": learning.model_type,
                                              "seed": learning.seed,
                                              "window_ms": learning.feature_window_ms})

    def on_FactsRecorded(self, msg: FactsRecorded, sender: Any) -> None:  # noqa: N802
        if msg.outcomes:
            self._maybe_train()

    def on_timer(self, payload: Any) -> None:
        if payload == "check":
            assert self.settings is not None
            try:
                self._maybe_train()
            finally:
                self.wakeupAfter(self.settings.learning.check_interval_s, payload="check")

    def on_Forwarded(self, msg: Forwarded, sender: Any) -> None:  # noqa: N802
        request = msg.message
        if isinstance(request, TrainRequest):
            self._train(request.correlation_id, request.job or self.default_job(),
                        request.force, msg.reply_to)

    def _maybe_train(self) -> None:
        assert self.stores is not None and self.settings is not None
        learning = self.settings.learning
        outcomes = self.stores.facts.counts().outcomes
        if outcomes < learning.min_outcomes:
            return
        due = self.trained_on == 0 or outcomes - self.trained_on >= learning.retrain_every_outcomes
        if due and outcomes != self.attempted_at:
            self._train(uuid.uuid4().hex, self.default_job(), False, None)

    def _train(self, correlation_id: str, job: JobConfiguration, force: bool,
               reply_to: Any) -> None:
        assert self.stores is not None
        stores = self.stores
        started = time.monotonic()
        readings = stores.facts.all_readings()
        outcomes = stores.facts.all_outcomes()
        self.attempted_at = len(outcomes)
        collection = valid_collection(stores.features.collections(),
                                      stores.features.invalid_features())
        try:
            candidate = make_candidate(readings, outcomes, collection, job, self._champion())
        except TrainingError as exc:
            self.log.warning("training_skipped", reason=str(exc), outcomes=len(outcomes))
            if reply_to is not None:
                self.send(reply_to, TrainResult(correlation_id, None, False, (), str(exc)))
            return
        version = stores.registry.register(
            feature_collection_id=collection.id, job=job.to_mapping(),
            metrics=dict(candidate.metrics), lineage=json.loads(candidate.lineage.to_json()),
            artifact=candidate.artifact, created_at_ms=int(time.time() * 1000),
        )
        self.trained_on = max(self.trained_on, len(outcomes))
        self.log.info("candidate_registered", version=version, collection_id=collection.id,
                      model_type=job.model_type.value, outcomes=len(outcomes),
                      roc_auc=dict(candidate.metrics).get("roc_auc"),
                      seconds=round(time.monotonic() - started, 3),
                      correlation_id=correlation_id)
        message = ModelCandidate(correlation_id, version, force, reply_to)
        publishers = self.peers.of("publisher")
        for address in publishers[:1]:
            self.send(address, message)
        # No publisher up right now: it judges pending candidates from the registry on start.

    def _champion(self) -> ChampionRef | None:
        assert self.stores is not None
        record = self.stores.registry.champion()
        if record is None:
            return None
        collections = {c.id: c for c in self.stores.features.collections()}
        collection = collections.get(record.feature_collection_id)
        if collection is None:
            return None
        pipeline = load_model(self.stores.registry.artifact(record.version))
        window_ms = json.loads(record.job).get("window_ms", self.default_job().window_ms)
        return ChampionRef(record.version, pipeline, collection, int(window_ms))
