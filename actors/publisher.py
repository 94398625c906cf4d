"""Publisher: gates candidates, runs shadow trials, makes the good ones champion, rolls back.

Owns: nothing in memory; candidates, champions and shadow trials live in the registry's
file (the status log, the champion log and the trial counts).
Receives: ``ModelCandidate`` (and a timer: candidates left unjudged while it was down are
judged from the registry, trials that reached a verdict are ended);
``ShadowServed`` (a predictor's cumulative shadow count); ``Forwarded(RollbackRequest)``
(``rml rollback``).
Sends: ``ModelPublished`` (a new champion) or ``ShadowStarted`` (a new shadow) to every
predictor; ``TrainResult`` to whoever asked for the run; ``RollbackResult``.

Predictors serve compiled forms and never import scikit-learn; the publisher has it, so
it compiles (``learning.serving.inference.checked_compiled_form``) any servable version registered
without a form (before forms existed) at its start, and a version about to be served.
"""

from __future__ import annotations

import time
from typing import Any

from actors import metrics
from actors.base import Worker
from learning.features.collections import usable_collection_ids
from learning.models.gate import judge_candidate
from learning.models.lineage import feature_names_of
from learning.models.rollback import rollback_reason, rollback_refusal
from learning.serving.shadow import CandidatePlan, judge_trial, plan_candidate, trial_progress
from messages.protocol import (
    Forwarded,
    Init,
    ModelCandidate,
    ModelPublished,
    RollbackRequest,
    RollbackResult,
    ShadowServed,
    ShadowStarted,
    TrainResult,
)
from storage.backend import ACTOR_CONNECT_WAIT_S, StoreBackend
from storage.features import FeatureStore
from storage.registry import (
    CANDIDATE,
    CHAMPION,
    REJECTED,
    RETIRED,
    SHADOW,
    ModelRecord,
    ModelRegistry,
)
from storage.shadow import ShadowCounts, ShadowTrial, ShadowTrials

__all__ = ["Publisher"]

_SCAN_S = 2.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class Publisher(Worker):
    """The publish gate between the learner and the predictors."""

    role = "publisher"

    def __init__(self) -> None:
        super().__init__()
        self.backend: StoreBackend | None = None
        self.registry: ModelRegistry | None = None
        self.trials: ShadowTrials | None = None
        self.features: FeatureStore | None = None

    def on_start(self, init: Init) -> None:
        # Kept across the retries of a start that waits for the store (``actors.base``).
        self.backend = self.backend or StoreBackend(init.settings,
                                                    connect_wait_s=ACTOR_CONNECT_WAIT_S)
        self.registry = self.backend.registry()
        self.trials = self.backend.shadow_trials()
        self.features = self.backend.features()
        for record in self.registry.versions():
            if record.status in (CHAMPION, RETIRED, SHADOW):
                self._try_compile(record.version)
            if record.status == CHAMPION:
                _show_champion(record)
        self.wakeupAfter(_SCAN_S, payload="scan")

    def _compile(self, version: int, pipeline: Any = None) -> None:
        """Give ``version`` a compiled form if it has none and its pipeline allows one (else
        predictors load its artifact, importing scikit-learn). Idempotent."""
        assert self.registry is not None
        if self.registry.compiled_form(version) is not None:
            return
        record = self.registry.get(version)
        from learning.models.artifacts import load_model
        from learning.serving.inference import checked_compiled_form

        if pipeline is None:
            pipeline = load_model(self.registry.artifact(version))
        form = checked_compiled_form(pipeline, feature_names_of(record.lineage))
        if form is not None:
            self.registry.add_compiled_form(version, form)
        self.log.info("compiled_form_added" if form else "no_compiled_form", version=version)

    def _try_compile(self, version: int) -> None:
        """``_compile``, a failure logged: an artifact that cannot load is refused where it
        is loaded (a rollback checks it first), and is no reason to stop starting or judging."""
        try:
            self._compile(version)
        except Exception as exc:
            self.log.warning("compile_failed", version=version, error=repr(exc))

    def on_stop(self) -> None:
        if self.backend is not None:
            self.backend.close()

    # --- candidates ---------------------------------------------------------------------

    def on_ModelCandidate(self, msg: ModelCandidate, sender: Any) -> None:  # noqa: N802
        self._judge(msg.version, msg.force, msg.reply_to, msg.correlation_id)

    def on_timer(self, payload: Any) -> None:
        if payload == "scan":
            assert self.registry is not None and self.trials is not None
            try:
                for record in self.registry.versions():
                    if record.status == CANDIDATE:
                        self._judge(record.version, False, None, "")
                    elif record.status == SHADOW:
                        trial = self.trials.get(record.version)
                        if trial is not None:  # an ending cut short by a crash
                            self._finish_shadow(trial)
            finally:
                self.wakeupAfter(_SCAN_S, payload="scan")

    def _judge(self, version: int, force: bool, reply_to: Any, correlation_id: str) -> None:
        """Idempotent: a version already judged is answered with its recorded verdict."""
        assert self.registry is not None and self.settings is not None
        assert self.trials is not None
        record = self.registry.get(version)
        scores = tuple(record.metrics)
        if record.status != CANDIDATE:
            published = record.status in (CHAMPION, RETIRED)
            if reply_to is not None:
                self.send(reply_to, TrainResult(correlation_id, version, published, scores,
                                                record.status_reason))
            return
        champion = self.registry.champion()
        decision = judge_candidate(dict(scores), champion is not None,
                                   self.settings.learning.publish_margin, force)
        target = self.settings.learning.shadow_requests
        plan = plan_candidate(decision.publish, champion is not None, force, target)
        reason = decision.reason
        if plan is not CandidatePlan.REJECT:
            self._try_compile(version)
        if plan is CandidatePlan.PROMOTE:
            self._end_shadows(f"version {version} was published", keep=version)
            self._promote(record, reason)
            self.log.info("model_published", version=version, reason=reason,
                          correlation_id=correlation_id)
        elif plan is CandidatePlan.SHADOW:
            self._end_shadows(f"version {version} entered shadow", keep=version)
            self.trials.start(version, target, _now_ms())  # before the status: idempotent
            reason = f"{reason}; serving in shadow for {target} requests before promotion"
            self.registry.set_status(version, SHADOW, reason, _now_ms())
            self._tell_predictors(ShadowStarted(version, record.feature_collection_id, target))
            self.log.info("model_in_shadow", version=version, requests=target, reason=reason,
                          correlation_id=correlation_id)
        else:
            self.registry.set_status(version, REJECTED, reason, _now_ms())
            self.log.info("model_rejected", version=version, reason=reason,
                          correlation_id=correlation_id)
        if reply_to is not None:
            self.send(reply_to, TrainResult(correlation_id, version,
                                            plan is CandidatePlan.PROMOTE, scores, reason))

    # --- shadow trials ------------------------------------------------------------------

    def on_ShadowServed(self, msg: ShadowServed, sender: Any) -> None:  # noqa: N802
        assert self.registry is not None and self.trials is not None
        try:
            status = self.registry.get(msg.version).status
        except KeyError:
            self.log.warning("shadow_report_unknown_version", version=msg.version,
                             reporter=msg.reporter)
            return
        if status != SHADOW:
            return  # ended (promoted, superseded, rolled back): late reports change nothing
        try:
            trial = self.trials.record(msg.version, msg.reporter,
                                       ShadowCounts(msg.served, msg.agreed, msg.errors),
                                       _now_ms())
        except KeyError:  # in shadow without a trial (not put there by _judge): not counted
            self.log.warning("shadow_report_without_trial", version=msg.version,
                             reporter=msg.reporter,
                             reason=f"version {msg.version} is in shadow but no shadow trial "
                                    "was ever started for it; the report is not counted")
            return
        self.log.debug("shadow_progress", version=msg.version, progress=trial_progress(trial))
        if trial.target:
            metrics.SHADOW_PROGRESS.labels(str(msg.version)).set(
                min(1.0, trial.counts.served / trial.target))
        self._finish_shadow(trial)

    def _finish_shadow(self, trial: ShadowTrial) -> None:
        """End a shadow whose trial reached a verdict (``judge_trial``): promote it, or reject
        it with the reason; a no-op while it goes on, and once it has ended."""
        assert self.registry is not None and self.settings is not None
        verdict = judge_trial(trial, self.settings.learning.shadow_max_error_rate)
        if verdict is None:
            return
        record = self.registry.get(trial.version)
        if record.status != SHADOW:
            return
        if verdict.plan is CandidatePlan.PROMOTE:
            self._promote(record, verdict.reason)
            self.log.info("model_published", version=trial.version, reason=verdict.reason)
        else:
            # The predictors drop the shadow on their next refresh (it is no longer one).
            self.registry.set_status(trial.version, REJECTED, verdict.reason, _now_ms())
            self.log.warning("shadow_rejected", version=trial.version, reason=verdict.reason)

    def _end_shadows(self, why: str, keep: int) -> None:
        """End every unfinished shadow but ``keep``'s (a newer candidate or a rollback won)."""
        assert self.registry is not None and self.trials is not None
        for record in self.registry.versions():
            if record.status == SHADOW and record.version != keep:
                trial = self.trials.get(record.version)
                reason = f"shadow ended unfinished after {trial_progress(trial)}: {why}"
                self.registry.set_status(record.version, REJECTED, reason, _now_ms())
                self.log.info("shadow_ended", version=record.version, reason=reason)

    # --- rollback -----------------------------------------------------------------------

    def on_Forwarded(self, msg: Forwarded, sender: Any) -> None:  # noqa: N802
        if isinstance(msg.message, RollbackRequest):
            self.send(msg.reply_to, self._rollback(msg.message))

    def _rollback(self, request: RollbackRequest) -> RollbackResult:
        """Make ``request.version`` champion if it can be served now; idempotent."""
        assert self.registry is not None and self.features is not None
        version, cid = request.version, request.correlation_id
        try:
            record = self.registry.get(version)
        except KeyError:
            record = None
        champion = self.registry.champion()
        if record is not None and champion is not None and champion.version == version:
            return RollbackResult(cid, version, True, version,
                                  f"version {version} is already the champion")
        artifact_error = None
        if record is not None:
            try:
                from learning.models.artifacts import load_model

                pipeline = load_model(self.registry.artifact(version))  # sha256, allow-list
                self._compile(version, pipeline)
            except Exception as exc:
                artifact_error = f"{type(exc).__name__}: {exc}"
        usable = usable_collection_ids(self.features.collections(),
                                       self.features.invalid_features())
        refusal = rollback_refusal(version, record.status if record else None,
                                   record.feature_collection_id if record else None, usable,
                                   artifact_error)
        if refusal is not None or record is None:
            self.log.warning("rollback_refused", version=version, reason=refusal,
                             correlation_id=cid)
            return RollbackResult(cid, version, False, None, refusal or "")
        reason = rollback_reason(request.reason)
        self._end_shadows(f"rollback to version {version}", keep=version)
        self._promote(record, reason)
        previous = champion.version if champion else None
        self.log.info("model_rolled_back", version=version, previous_version=previous,
                      reason=reason, correlation_id=cid)
        return RollbackResult(cid, version, True, previous, reason)

    def _promote(self, record: ModelRecord, reason: str) -> None:
        """Make ``record`` the champion (one registry transaction) and tell every predictor."""
        assert self.registry is not None
        self.registry.promote(record.version, reason, _now_ms())
        _show_champion(record)
        self._tell_predictors(ModelPublished(record.version, record.feature_collection_id))

    def _tell_predictors(self, notice: ModelPublished | ShadowStarted) -> None:
        for address in self.peers.of("predictor"):
            self.send(address, notice)


def _show_champion(record: ModelRecord) -> None:
    """The champion's holdout ROC AUC, in the node's metrics."""
    auc = dict(record.metrics).get("roc_auc")
    if auc is not None:
        metrics.CHAMPION_AUC.set(auc)
