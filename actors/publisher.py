"""Publisher: gates candidates and makes the good ones champion.

Owns: nothing in memory; candidates and champions live in the registry.
Receives: ``ModelCandidate`` (and a timer: candidates left unjudged while it
was down are judged from the registry).
Sends: ``ModelPublished`` to every predictor; ``TrainResult`` to whoever
asked for the run.
"""

from __future__ import annotations

import time
from typing import Any

from actors.base import Worker
from learning.gate import judge_candidate
from messages.protocol import Init, ModelCandidate, ModelPublished, TrainResult
from storage.sqlite_registry import SQLiteModelRegistry

__all__ = ["Publisher"]

_SCAN_S = 2.0


class Publisher(Worker):
    """The publish gate between the learner and the predictors."""

    role = "publisher"

    def __init__(self) -> None:
        super().__init__()
        self.registry: SQLiteModelRegistry | None = None

    def on_start(self, init: Init) -> None:
        self.registry = SQLiteModelRegistry(init.settings.data_path / "models.sqlite",
                                            busy_timeout_s=init.settings.storage.busy_timeout_s)
        self.wakeupAfter(_SCAN_S, payload="scan")

    def on_stop(self) -> None:
        if self.registry is not None:
            self.registry.close()

    def on_ModelCandidate(self, msg: ModelCandidate, sender: Any) -> None:  # noqa: N802
        self._judge(msg.version, msg.force, msg.reply_to, msg.correlation_id)

    def on_timer(self, payload: Any) -> None:
        if payload == "scan":
            assert self.registry is not None
            try:
                for record in self.registry.versions():
                    if record.status == "candidate":
                        self._judge(record.version, False, None, "")
            finally:
                self.wakeupAfter(_SCAN_S, payload="scan")

    def on_peers(self) -> None:
        # A predictor that (re)started loads the champion itself; nothing to resend.
        pass

    def _judge(self, version: int, force: bool, reply_to: Any, correlation_id: str) -> None:
        """Idempotent: a version already judged is answered with its recorded verdict."""
        assert self.registry is not None and self.settings is not None
        record = self.registry.get(version)
        metrics = tuple(record.metrics)
        if record.status != "candidate":
            published = record.status in ("champion", "retired")
            if reply_to is not None:
                self.send(reply_to, TrainResult(correlation_id, version, published, metrics,
                                                record.status_reason))
            return
        champion = self.registry.champion()
        decision = judge_candidate(dict(metrics), champion is not None,
                                   self.settings.learning.publish_margin, force)
        now_ms = int(time.time() * 1000)
        if decision.publish:
            self.registry.promote(version, decision.reason, now_ms)
            notice = ModelPublished(version, record.feature_collection_id)
            for address in self.peers.of("predictor"):
                self.send(address, notice)
            self.log.info("model_published", version=version, reason=decision.reason,
                          correlation_id=correlation_id)
        else:
            self.registry.set_status(version, "rejected", decision.reason, now_ms)
            self.log.info("model_rejected", version=version, reason=decision.reason,
                          correlation_id=correlation_id)
        if reply_to is not None:
            self.send(reply_to, TrainResult(correlation_id, version, decision.publish, metrics,
                                            decision.reason))
