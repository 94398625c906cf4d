"""Collector: owns an HTTP ingest edge; stores facts before it acknowledges them.

Owns: an ``HttpEdge`` thread serving ``POST /readings``, ``POST /outcomes``,
``GET /health`` and ``GET /openapi.json`` (both public); a ``Waker`` it watches with
``ThespianWatch``; with ``[mqtt]`` configured, an MQTT client thread (``actors.mqtt_ingest``)
that commits what the broker delivers before acknowledging it.
Receives: ``Init``, ``Peers``, wake-ups from its edge, timers.
Sends: ``FactsRecorded`` hints (coalesced, a few a second at most) to the
feature generator and the learner.

The edge thread decodes, inserts and commits (durably) and only then answers:
no actor hop on the hot path. The actor only hears that something was stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from actors import metrics
from actors.base import EdgeWorker
from actors.counters import Counters
from actors.edge import Request, Response, Route, Waker
from actors.hints import HintWindow
from actors.mqtt_ingest import MqttIngest, client_id
from config.settings import IngestSettings
from messages.codec import (
    BodyError,
    decode_outcomes,
    decode_readings,
    encode,
    ingest_answer,
    wire_format,
)
from messages.openapi import INGEST_OPENAPI_JSON
from messages.protocol import FactsNoted, FactsRecorded, Init, WorkerNote
from storage.backend import ACTOR_CONNECT_WAIT_S, StoreBackend
from storage.errors import StoreError
from storage.facts import FactStore

__all__ = ["Collector"]


class Collector(EdgeWorker):
    """Serves ingest over HTTP; every acknowledged fact is committed first."""

    role = "collector"
    edge_families = metrics.INGEST

    def __init__(self) -> None:
        super().__init__()
        self.waker: Waker | None = None
        # What the hints report; written by the edge thread, read by the actor.
        self.counters = Counters(("readings_accepted", "outcomes_accepted"))
        self._backend: StoreBackend | None = None
        self._store: FactStore | None = None  # used only by the edge's worker thread
        self._last_hint = 0.0
        self._hint_scheduled = False
        # What each receiver was last told (a hint carries what is new to *it*), and which
        # receivers have not yet noted their last hint (they get no new one till then).
        self._window = HintWindow()
        self.mqtt: MqttIngest | None = None
        self._mqtt_backend: StoreBackend | None = None
        self._mqtt_store: FactStore | None = None
        self._mqtt_reported: dict[str, Any] | None = None

    def on_start(self, init: Init) -> None:
        metrics.INGEST_UNAVAILABLE.labels("store").inc(0)  # the series exists from the start
        self.waker = Waker()
        self.watch_fds = (self.waker.fileno(),)
        self.prepare_edge()

    def edge_settings(self) -> IngestSettings:
        assert self.settings is not None
        return self.settings.ingest

    def edge_routes(self) -> list[Route]:
        return [
            Route("POST", "/readings", self._post_readings, blocking=True),
            Route("POST", "/outcomes", self._post_outcomes, blocking=True),
            Route("GET", "/health", self._health, public=True),
            # Public, like /health: it holds no secret and tells clients how to authenticate.
            Route("GET", "/openapi.json", _openapi, public=True),
        ]

    def on_serve(self) -> None:
        super().on_serve()
        assert self.settings is not None
        if self.settings.mqtt.url and self.mqtt is None:
            # Here, not in on_start: a promoted standby subscribes under its new name (the
            # client id of the slot, whose session holds what its predecessor left).
            self.mqtt = MqttIngest(
                self.settings.mqtt,
                client_id(self.settings.mqtt, self.name),
                self._mqtt_facts, self._mqtt_accepted, self.log,
                self.settings.ingest.max_future_ms, changed=self._mqtt_changed)
            self.mqtt.start()

    def on_stop(self) -> None:
        if self.mqtt is not None:
            self.mqtt.stop()
        self.stop_edge()
        if self._mqtt_backend is not None:
            self._mqtt_backend.close()
        if self._backend is not None:
            self._backend.close()
        if self.waker is not None:
            self.waker.close()

    # --- the edge's handlers (run in the edge's worker thread) ---------------------

    def _facts(self) -> FactStore:
        if self._store is None:
            assert self.settings is not None
            # Its name is its fact log's writer id: a replacement under the same name
            # finishes a batch its predecessor left half written before its first one.
            if self._backend is None:  # one, kept: its connection may still be coming
                self._backend = StoreBackend(self.settings, writer=self.name,
                                             connect_wait_s=ACTOR_CONNECT_WAIT_S)
            self._store = self._backend.facts()
        return self._store

    def _mqtt_facts(self) -> FactStore:
        """The MQTT thread's own store (its own fact log writer: never two threads on one)."""
        if self._mqtt_store is None:
            assert self.settings is not None
            if self._mqtt_backend is None:
                self._mqtt_backend = StoreBackend(self.settings, writer=f"{self.name}-mqtt",
                                                  connect_wait_s=ACTOR_CONNECT_WAIT_S)
            self._mqtt_store = self._mqtt_backend.facts()
        return self._mqtt_store

    def _mqtt_accepted(self, kind: str, n: int) -> None:  # the MQTT thread
        self.counters.bump(f"{kind}_accepted", n)
        if self.waker is not None:
            self.waker.notify()

    def _mqtt_changed(self) -> None:  # the MQTT thread: the actor reports it (on_readable)
        if self.waker is not None:
            self.waker.notify()

    def _report_mqtt(self) -> None:
        """Tell the supervisor (and so ``status``) when the MQTT connection changed."""
        if self.mqtt is None or self.supervisor is None:
            return
        state = self.mqtt.state().to_mapping()
        shown = {k: state[k] for k in ("connected", "since_ms", "error")}
        if shown != self._mqtt_reported:
            self._mqtt_reported = shown
            self.send(self.supervisor, WorkerNote("mqtt", tuple(sorted(shown.items()))))

    def _post_readings(self, request: Request) -> Response:
        return self._ingest(request, "readings", decode_readings,
                            lambda store, items: store.insert_readings(items))

    def _post_outcomes(self, request: Request) -> Response:
        return self._ingest(request, "outcomes", decode_outcomes,
                            lambda store, items: store.insert_outcomes(items))

    def _ingest(self, request: Request, kind: str, decode: Callable[..., Any],
                insert: Callable[[FactStore, Any], Any]) -> Response:
        """Decode, commit, then answer: nothing is acknowledged before it is durable."""
        assert self.settings is not None
        content_type = request.headers.get("content-type")
        try:
            fmt = wire_format(content_type)
            batch = decode(request.body, content_type, now_ms=int(time.time() * 1000),
                           max_future_ms=self.settings.ingest.max_future_ms)
        except BodyError as exc:
            metrics.INGEST_BATCH.labels(kind).observe(0)
            return Response.error(exc.status, str(exc))
        began = time.perf_counter()
        try:
            result = insert(self._facts(), batch.items)
        except StoreError as exc:
            # Nothing was acknowledged: the gateway retries.
            self.log.error("store_error", kind=kind, error=str(exc))
            metrics.INGEST_UNAVAILABLE.labels("store").inc()
            return Response(503, encode({"error": f"store unavailable: {exc}"}, fmt),
                            content_type=_media(fmt), headers=(("Retry-After", "1"),))
        metrics.count_batch(kind, result.accepted, result.duplicates,
                            (e.error for e in batch.rejected), time.perf_counter() - began)
        self.counters.bump(f"{kind}_accepted", result.accepted)
        if self.waker is not None and result.accepted:
            self.waker.notify()
        answer = ingest_answer(result.accepted, result.duplicates, batch.rejected)
        return Response(200, encode(answer, fmt), content_type=_media(fmt))

    def _health(self, request: Request) -> Response:
        answer: dict[str, Any] = {"status": "ok", "actor": self.name}
        if self.mqtt is not None:
            answer["mqtt"] = self.mqtt.state().to_mapping()
        return Response.json(200, answer)

    # --- hints ----------------------------------------------------------------------

    def on_readable(self, fds: list[int]) -> None:
        if self.waker is not None:
            self.waker.drain()
        self._maybe_hint()
        self._report_mqtt()

    def on_timer(self, payload: Any) -> None:
        if payload == "hint":
            self._hint_scheduled = False
            self._maybe_hint()

    def on_peers(self) -> None:
        receivers = self._receivers()
        self._window.forget_except(receivers)
        self._maybe_hint()

    def on_FactsNoted(self, msg: FactsNoted, sender: Any) -> None:  # noqa: N802
        self._window.noted(sender, msg.sequence)
        self._maybe_hint()  # it may have missed some while busy

    def _receivers(self) -> list[Any]:
        return [a for role in ("feature_generator", "learner") for a in self.peers.of(role)]

    def _maybe_hint(self) -> None:
        """At most one ``FactsRecorded`` per interval (bursts of small actor messages are
        slow), and none to a receiver that has not noted its last one (``actors.hints``)."""
        assert self.settings is not None
        values = self.counters.snapshot()
        seen = (values["readings_accepted"], values["outcomes_accepted"])
        now = time.monotonic()
        window = self._window
        due = [a for a in window.ready(self._receivers(), now) if window.told(a, (0, 0)) != seen]
        if not due:
            return
        wait = self._last_hint + self.settings.ingest.hint_interval_s - now
        if wait > 0:
            if not self._hint_scheduled:
                self._hint_scheduled = True
                self.wakeupAfter(wait, payload="hint")
            return
        before = [window.told(a, (0, 0)) for a in due]
        sequence = window.sent(due, now, seen)
        for address, (readings, outcomes) in zip(due, before, strict=True):
            self.send(address, FactsRecorded(self.name, seen[0] - readings, seen[1] - outcomes,
                                             sequence))
        self._last_hint = now


def _openapi(request: Request) -> Response:
    return Response(200, INGEST_OPENAPI_JSON)


def _media(fmt: str) -> str:
    return "application/msgpack" if fmt == "msgpack" else "application/json"
