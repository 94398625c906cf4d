"""The root supervisor's services to the outside: the directory, status, routing, dead letters.

Only the root (``rml-root``, the one actor with a Thespian ``globalName``) keeps the
directory of every actor below (fed by ``ChildUp``), tells workers where their peers are,
answers ``StatusRequest`` and routes requests from outside (``PredictRequest``,
``TrainRequest``, ``RollbackRequest``) to a live worker of the right role.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from config.settings import Settings
from messages.protocol import (
    ActorInfo,
    Forwarded,
    Peers,
    PredictionError,
    PredictRequest,
    RollbackRequest,
    RollbackResult,
    StatusReport,
    StatusRequest,
    TrainRequest,
    TrainResult,
)
from supervision.directory import Directory
from supervision.spec import SupervisorSpec

__all__ = ["RootServices"]


class RootServices:
    """Mixed into ``Supervisor``; these handlers only ever run in the root."""

    # Provided by the Supervisor (annotations only: nothing here shadows the actor's own).
    name: str
    settings: Settings | None
    spec: SupervisorSpec | None
    log: Any
    send: Callable[[Any, Any], None]
    directory: Directory
    started_at_ms: int
    _last_peers: Peers | None
    _round_robin: Iterator[int]
    _dead_letters: Any
    _store_backend: Any

    def _dead_letter_store(self) -> Any:
        if self._dead_letters is None:
            from storage.backend import ACTOR_CONNECT_WAIT_S, StoreBackend

            assert self.settings is not None
            if self._store_backend is None:  # one, kept: its connection may still be coming
                self._store_backend = StoreBackend(self.settings,
                                                   connect_wait_s=ACTOR_CONNECT_WAIT_S)
            self._dead_letters = self._store_backend.deadletters()
        return self._dead_letters

    def _record(self, info: ActorInfo) -> None:
        self.directory.record(info)
        peers = self.directory.peers()
        if peers == self._last_peers:
            return
        self._last_peers = peers
        for _role, addresses in peers.by_role:
            for address in addresses:
                self.send(address, peers)

    def on_StatusRequest(self, msg: StatusRequest, sender: Any) -> None:  # noqa: N802
        own = ActorInfo(self.name, "supervisor", os.getpid(), 0,
                        "running" if self.spec else "starting", "")
        actors = (own, *self.directory.actors())
        dead = 0
        try:
            if self.settings is not None:
                dead = self._dead_letter_store().count()
        except Exception:
            self.log.exception("dead_letters_unreadable")
        self.send(sender, StatusReport(msg.correlation_id,
                                       tuple(replace(a, address=None) for a in actors),
                                       self.started_at_ms, dead))

    def on_PredictRequest(self, msg: PredictRequest, sender: Any) -> None:  # noqa: N802
        self._route("predictor", msg, sender,
                    PredictionError(msg.correlation_id, "no predictor is running", 503))

    def on_TrainRequest(self, msg: TrainRequest, sender: Any) -> None:  # noqa: N802
        self._route("learner", msg, sender,
                    TrainResult(msg.correlation_id, None, False, (), "no learner is running"))

    def on_RollbackRequest(self, msg: RollbackRequest, sender: Any) -> None:  # noqa: N802
        self._route("publisher", msg, sender,
                    RollbackResult(msg.correlation_id, msg.version, False, None,
                                   "no publisher is running"))

    def _route(self, role: str, msg: Any, sender: Any, unavailable: Any) -> None:
        live = self.directory.live(role)
        if not live:
            self.send(sender, unavailable)
            return
        target = live[next(self._round_robin) % len(live)]
        self.send(target, Forwarded(msg, sender))
