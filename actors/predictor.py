"""Predictor: serves ``POST /model`` from its own HTTP edge and ``PredictRequest`` via Thespian.

Owns: an ``HttpEdge`` thread; an immutable ``ServingSnapshot`` (champion,
fallback and a model in shadow, if any) that it swaps whole, so the edge never
sees half a model; a ``ShadowRunner`` of requests waiting for the shadow model.
Also owns a ``RowTable``: each location's latest feature row, for the collections
the snapshot's models take, loaded from the store and kept current by the feature
generator's pushes; ``{"location_id"}`` answers read it, and the store only when the
table is not confirmed within ``[predict] row_freshness_s`` (``learning.serving.row_table``).
Receives: ``ModelPublished``, ``ShadowStarted`` and ``CollectionSwitched``
(choose again now), a timer (choose again, in case a hint was lost), a shadow
timer (ask the shadow model, off the answers, and report), ``Forwarded(PredictRequest)``
(answer ``reply_to``), ``FeatureRows`` (take them; reload first when asked).
Sends: ``Prediction`` / ``PredictionError``; ``ShadowServed`` to the publisher;
``FeatureRowsNoted`` to the feature generator.
On start it reads the champion, the models and the invalid features from the
stores: never from memory. A champion on a collection with an invalid feature
is not served; a model on a valid collection stands in (answers marked
``fallback``), or the request is refused with 503 and the reason.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from actors import metrics
from actors.base import EdgeWorker
from actors.counters import Counters
from actors.edge import Request, Response, Route, make_response
from config.settings import PredictSettings
from learning.features.collections import FeatureRow, usable_collection_ids, valid_collection
from learning.serving.answer import (
    NO_MODEL_YET,
    HeldRows,
    LoadedModel,
    ServingChoice,
    ServingSnapshot,
    choose_models,
    load_serving_model,
)
from learning.serving.row_table import RowLookup, RowTable
from learning.serving.shadow import ShadowPrediction, ShadowRunner
from messages.codec import (
    BodyError,
    PredictQuery,
    decode_predict_query,
    encode,
    encode_prediction_json,
    prediction_to_wire,
    wire_format,
)
from messages.openapi import PREDICT_OPENAPI_JSON
from messages.protocol import (
    CollectionSwitched,
    FeatureRows,
    FeatureRowsNoted,
    Forwarded,
    Init,
    ModelPublished,
    Prediction,
    PredictionError,
    PredictRequest,
    ShadowServed,
    ShadowStarted,
)
from storage.backend import ACTOR_CONNECT_WAIT_S, StoreBackend
from storage.errors import StoreError
from storage.features import FeatureStore
from storage.registry import ModelRegistry
from storage.shadow import ShadowCounts

__all__ = ["Predictor"]

_SHADOW_TICK_S = 0.25  # shadow predictions are made, and reported, at most this often
# At most this much of each tick goes to shadow predictions: the rest of the actor's time is
# for its messages. A backlog past the runner's capacity is dropped (and counted), never served
# late at the champion's expense.
_SHADOW_BUDGET_S = 0.05
_SHADOW_RESEND_S = 2.0  # an unchanged count is sent again this often (a report may be lost)
_SHADOW_SUMMARY_S = 10.0  # one summary log line per shadow model at most this often


def _served(snapshot: ServingSnapshot) -> ServingChoice:
    """The choice a snapshot serves, to compare with a new one."""
    first, fallback, shadow = snapshot.champion, snapshot.fallback, snapshot.shadow
    return ServingChoice(first.version if first else None,
                         fallback.version if fallback else None, snapshot.stand_in,
                         snapshot.reason if first is None or snapshot.stand_in else "",
                         shadow.version if shadow else None)


_JSON = "application/json"


class Predictor(EdgeWorker):
    """Answers predictions from the champion; swaps models on ``ModelPublished``."""

    role = "predictor"
    edge_families = metrics.PREDICT

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = ServingSnapshot()
        self.backend: StoreBackend | None = None
        self.registry: ModelRegistry | None = None
        self.features: FeatureStore | None = None  # actor thread only
        self.counters = Counters(("ok", "fallback", "bad_request", "unavailable"))
        self.rows = RowTable(PredictSettings().row_freshness_s)  # replaced in on_start
        self._edge_store: FeatureStore | None = None  # the edge's loop thread only
        self._edge_rows: RowLookup | None = None  # its reader of the table
        self._actor_rows: RowLookup | None = None  # the actor thread's
        # Shadow serving: requests wait here for the shadow model (the edge only appends).
        self.shadow = ShadowRunner()
        self._reporter = uuid.uuid4().hex  # this incarnation: its counts start from zero
        self._reported: tuple[int, ShadowCounts, float] | None = None  # version, counts, when
        self._summarised: tuple[int, float] | None = None
        # What the metrics were last given (actors.metrics.flush_counters).
        self._flushed: dict[str, int] = {}
        self._rows_flushed: dict[str, int] = {}
        self._shadow_flushed: dict[int, dict[str, int]] = {}

    def on_start(self, init: Init) -> None:
        for cause in ("deadline", "error", "stand_in"):  # the series exist from the start
            metrics.PREDICTION_FALLBACKS.labels(cause).inc(0)
        settings = init.settings
        self.backend = self.backend or StoreBackend(settings, connect_wait_s=ACTOR_CONNECT_WAIT_S)
        self.registry = self.backend.registry()
        self.features = self.backend.features()
        self.rows.freshness_s = settings.predict.row_freshness_s
        self._refresh()
        self.wakeupAfter(settings.predict.refresh_interval_s, payload="refresh")
        self.prepare_edge()
        self.wakeupAfter(_SHADOW_TICK_S, payload="shadow")

    def on_activate(self) -> None:
        self._refresh()  # a standby: the champion may have changed while it waited

    def edge_settings(self) -> PredictSettings:
        assert self.settings is not None
        return self.settings.predict

    def edge_routes(self) -> list[Route]:
        return [
            Route("POST", "/model", self._post_model, fast=self._post_model_json),
            Route("GET", "/health", self._health, public=True),
            # The node's whole view (every process), the metrics port's: blocking, as it
            # reads the metrics files of every process.
            Route("GET", "/metrics", self._metrics, blocking=True),
            Route("GET", "/openapi.json", _openapi, public=True),
        ]

    def on_stop(self) -> None:
        self.stop_edge()  # first: the edge's thread uses its store until it has stopped
        if self.backend is not None:
            self.backend.close()

    # --- models -----------------------------------------------------------------------

    def _refresh(self) -> None:
        """Choose the models to serve from the registry and the feature store's verdicts;
        swap the snapshot when the choice differs from what we serve."""
        registry, features = self.registry, self.features
        assert registry is not None and features is not None
        records = {r.version: r for r in registry.versions()}
        collections = features.collections()
        invalid = features.invalid_features()
        active = valid_collection(collections, invalid).id if collections else None
        choice = choose_models(records.values(), usable_collection_ids(collections, invalid),
                               active)
        current = self.snapshot
        if choice == _served(current):
            held = {m.feature_collection_id for m in (current.champion, current.fallback,
                                                       current.shadow) if m is not None}
            if held - self.rows.collections:  # a load the store refused: again now
                self._hold_rows(held)
            return
        loaded = {m.version: m for m in (current.champion, current.fallback, current.shadow)
                  if m is not None}

        def load(wanted: int | None) -> LoadedModel | None:
            if wanted is None:
                return None
            if wanted not in loaded:
                loaded[wanted] = load_serving_model(records[wanted],
                                                    registry.compiled_form(wanted),
                                                    lambda: registry.artifact(wanted))
            return loaded[wanted]

        first, fallback = load(choice.first), load(choice.fallback)
        shadow = load(choice.shadow) if first is not None else None
        self._hold_rows({m.feature_collection_id for m in (first, fallback, shadow)
                         if m is not None})
        # One assignment: the swap.
        self.snapshot = ServingSnapshot(first, fallback, choice.stand_in,
                                        choice.reason or NO_MODEL_YET, shadow)
        event = self.log.warning if choice.stand_in or first is None else self.log.info
        event("model_loaded", version=choice.first, stand_in=choice.stand_in,
              fallback_version=choice.fallback, active_collection_id=active,
              shadow_version=choice.shadow, reason=choice.reason or None)

    # --- rows -------------------------------------------------------------------------

    def _hold_rows(self, wanted: set[int]) -> None:
        """Hold the rows of these collections (reading the new ones from the store), only."""
        features, table = self.features, self.rows
        assert features is not None
        first = not table.collections
        started = time.time()
        complete = True
        for collection_id in sorted(wanted - table.collections):
            try:
                table.load(collection_id, features.latest_rows(collection_id))
            except StoreError as exc:  # its lookups read the store (and held rows) meanwhile
                complete = False
                self.log.warning("feature_rows_not_loaded", collection_id=collection_id,
                                 error=str(exc))
        table.keep(wanted)
        if first and complete and wanted:
            table.confirm(started)  # as fresh as the store when we began reading
            metrics.ROWS_CONFIRMED_AT.labels(self.name).set(table.confirmed_at)

    def on_FeatureRows(self, msg: FeatureRows, sender: Any) -> None:  # noqa: N802
        features, table = self.features, self.rows
        if features is None:
            return  # not started: the generator sends it again, asking for a reload
        if msg.reload:
            try:
                for collection_id in sorted(table.collections):
                    table.load(collection_id, features.latest_rows(collection_id))
            except StoreError as exc:  # unacknowledged: it is sent again, reload and all
                self.log.warning("feature_rows_not_reloaded", error=str(exc))
                return
        table.apply(FeatureRow(*row) for row in msg.rows)
        table.confirm(msg.sent_at)
        metrics.ROWS_CONFIRMED_AT.labels(self.name).set(table.confirmed_at)
        self.send(sender, FeatureRowsNoted(msg.version))

    def on_ModelPublished(self, msg: ModelPublished, sender: Any) -> None:  # noqa: N802
        self._refresh()

    def on_CollectionSwitched(self, msg: CollectionSwitched, sender: Any) -> None:  # noqa: N802
        self._refresh()

    def on_ShadowStarted(self, msg: ShadowStarted, sender: Any) -> None:  # noqa: N802
        self._refresh()

    def on_timer(self, payload: Any) -> None:
        if payload == "refresh":
            assert self.settings is not None
            try:
                self._refresh()
            finally:
                self.wakeupAfter(self.settings.predict.refresh_interval_s, payload="refresh")
        elif payload == "shadow":
            try:
                self._run_shadow()
            finally:
                self.wakeupAfter(_SHADOW_TICK_S, payload="shadow")

    # --- shadow serving -------------------------------------------------------------------

    def _run_shadow(self) -> None:
        """Ask the shadow model for the requests the champion answered since the last tick,
        then report this incarnation's cumulative count to the publisher (coalesced)."""
        assert self.settings is not None
        debug = self.settings.log_level == "debug"
        assert self.features is not None
        # Rows the champion was not asked with: through the actor's own store, on its thread.
        self.shadow.run_pending(self._actor_lookup(),
                                self._log_shadow_prediction if debug else None,
                                budget_s=_SHADOW_BUDGET_S)
        shadow = self.snapshot.shadow
        if shadow is None:
            return
        counts, now = self.shadow.counts(shadow.version), time.monotonic()
        last = self._reported
        stale = last is None or now - last[2] >= _SHADOW_RESEND_S
        if stale or last is None or last[:2] != (shadow.version, counts):
            for address in self.peers.of("publisher")[:1]:
                self.send(address, ShadowServed(self._reporter, shadow.version, counts.served,
                                                counts.agreed, counts.errors))
                self._reported = (shadow.version, counts, now)
        summarised = self._summarised
        if counts.served and (summarised is None or summarised[0] != shadow.version
                              or now - summarised[1] >= _SHADOW_SUMMARY_S):
            self._summarised = (shadow.version, now)
            self.log.info("shadow_summary", version=shadow.version, served=counts.served,
                          agreed=counts.agreed, errors=counts.errors,
                          mean_probability_difference=self.shadow.mean_difference(shadow.version),
                          dropped=self.shadow.dropped)

    def _log_shadow_prediction(self, outcome: ShadowPrediction) -> None:
        champion = outcome.champion
        self.log.debug("shadow_prediction", version=outcome.version,
                       probability=outcome.probability, error=outcome.error or None,
                       champion_version=champion.model_version,
                       champion_probability=champion.probability,
                       correlation_id=champion.correlation_id or None)

    # --- answering ----------------------------------------------------------------------

    def on_Forwarded(self, msg: Forwarded, sender: Any) -> None:  # noqa: N802
        request = msg.message
        if not isinstance(request, PredictRequest):
            return
        assert self.features is not None
        assert self.settings is not None
        query = PredictQuery(request.location_id, request.features, request.deadline_ms)
        self.send(msg.reply_to, self._answer(query, self._actor_lookup(), request.correlation_id))

    def _actor_lookup(self) -> RowLookup:
        """The actor thread's reader of the row table (its store: the actor's own)."""
        if self._actor_rows is None:
            features = self.features
            assert features is not None
            self._actor_rows = self.rows.reader(HeldRows(features.latest_row))
        return self._actor_rows

    def _edge_lookup(self) -> RowLookup:
        """The edge's loop thread's reader (``/model`` is answered there): its own store,
        opened on the first request, so it never queues on the actor's connection; closed
        in ``on_stop`` once the edge has stopped."""
        rows = self._edge_rows
        if rows is None:
            assert self.backend is not None
            self._edge_store = self.backend.features()
            rows = self._edge_rows = self.rows.reader(HeldRows(self._edge_store.latest_row))
        return rows

    def _post_model(self, request: Request) -> Response:
        content_type = request.headers.get("content-type")
        usual = self._post_model_json(request.body, content_type)
        if usual is not None:
            return make_response(usual[0], usual[1], _JSON, ())
        try:
            query = decode_predict_query(request.body, content_type)
        except BodyError as exc:  # a body unusable as a whole: said in JSON, as ingest does
            self.counters.bump("bad_request")
            return Response.error(exc.status, str(exc))
        answer = self._answer(query, self._edge_rows or self._edge_lookup())
        if isinstance(answer, Prediction):
            if wire_format(content_type) == "msgpack":
                return Response(200, encode(prediction_to_wire(answer), "msgpack"),
                                content_type="application/msgpack")
            return Response(200, encode_prediction_json(answer))
        return Response.error(answer.status, answer.reason)  # errors: JSON

    def _post_model_json(self, body: bytes, content_type: str | None,
                         ) -> tuple[int, bytes] | None:
        """``POST /model`` as it usually comes, a query in JSON (``Content-Type`` absent or
        ``application/json``) the codec takes: the answer's status and JSON body. The edge
        asks this first (the route's fast lane); None, for any other request, before doing
        anything: `_post_model` answers it."""
        if content_type is not None and content_type != "application/json":
            return None
        try:
            query = decode_predict_query(body, content_type)
        except BodyError:
            return None
        answer = self._answer(query, self._edge_rows or self._edge_lookup())
        if isinstance(answer, Prediction):
            return 200, encode_prediction_json(answer)
        return answer.status, Response.error(answer.status, answer.reason).body

    def _answer(self, query: PredictQuery, lookup: RowLookup,
                correlation_id: str = "") -> Prediction | PredictionError:
        """The query's answer (the champion's, or its fallback's, or why neither), counted;
        rows through ``lookup``, the calling thread's."""
        assert self.settings is not None
        snapshot = self.snapshot
        answer = self.shadow.answer(snapshot, query, lookup, correlation_id,
                                    deadline_ms=self.settings.predict.deadline_ms,
                                    on_fallback=_fallback_used)
        if isinstance(answer, Prediction):
            self._count(answer, snapshot)
        else:
            self.counters.bump("unavailable" if answer.status == 503 else "bad_request")
        return answer

    def _count(self, answer: Prediction, snapshot: ServingSnapshot) -> None:
        if not answer.fallback:
            self.counters.bump("ok")
            return
        self.counters.bump("fallback")
        if snapshot.stand_in:
            metrics.PREDICTION_FALLBACKS.labels("stand_in").inc()

    def _health(self, request: Request) -> Response:
        snapshot = self.snapshot
        champion, shadow = snapshot.champion, snapshot.shadow
        age = time.time() - self.rows.confirmed_at
        return Response.json(200, {"status": "ok", "actor": self.name,
                                   "model_version": champion.version if champion else None,
                                   "shadow_version": shadow.version if shadow else None,
                                   "rows_confirmed_age_s": age if age != float("inf")
                                   else None})

    def _metrics(self, request: Request) -> Response:
        return Response(200, metrics.render(), content_type=metrics.CONTENT_TYPE)

    def flush_metrics(self) -> None:
        super().flush_metrics()
        metrics.flush_counters(metrics.PREDICTIONS, self.counters.snapshot(), self._flushed)
        memory, store = self.rows.counts()
        metrics.flush_counters(metrics.ROWS, {"memory": memory, "store": store},
                               self._rows_flushed, self.name)
        champion, shadow = self.snapshot.champion, self.snapshot.shadow
        if champion is not None:
            metrics.CHAMPION_VERSION.set(champion.version)
            metrics.CHAMPION_COLLECTION.set(champion.feature_collection_id)
        # Every version shadowed here so far: the counts of one that has just been promoted
        # or dropped are added too, even if it came and went between two flushes.
        for version in {*self.shadow.versions(), *((shadow.version,) if shadow else ())}:
            counts = self.shadow.counts(version)
            metrics.flush_counters(
                metrics.SHADOW, {"served": counts.served, "agreed": counts.agreed,
                                 "error": counts.errors},
                self._shadow_flushed.setdefault(version, {}), str(version))


def _fallback_used(cause: str) -> None:
    """The first model's answer was not used (``learning.serving.answer.predict``): why."""
    metrics.PREDICTION_FALLBACKS.labels(cause).inc()
    if cause == "deadline":
        metrics.DEADLINE_MISSES.inc()


def _openapi(request: Request) -> Response:
    """The predict service's OpenAPI document (public, like ``/health``: it holds no secret)."""
    return Response(200, PREDICT_OPENAPI_JSON)
