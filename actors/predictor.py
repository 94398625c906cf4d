"""Predictor: serves ``POST /model`` from its own HTTP edge and ``PredictRequest`` via Thespian.

Owns: an ``HttpEdge`` thread; an immutable ``ServingSnapshot`` (champion and
fallback) that it swaps whole, so the edge never sees half a model.
Receives: ``ModelPublished`` and ``CollectionSwitched`` (choose again now), a
timer (choose again, in case a hint was lost), ``Forwarded(PredictRequest)``
(answer ``reply_to``).
Sends: ``Prediction`` / ``PredictionError``.
On start it reads the champion, the models and the invalid features from the
stores: never from memory. A champion on a collection with an invalid feature
is not served; a model on a valid collection stands in (answers marked
``fallback``), or the request is refused with 503 and the reason.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from actors.base import Worker
from actors.counters import Counters
from actors.edge import HttpEdge, Request, Response, Route
from learning.artifacts import load_model
from learning.collections import FeatureRow, usable_collection_ids, valid_collection
from learning.inference import ServingModel
from learning.serving import (
    NO_MODEL_YET,
    LoadedModel,
    ServingChoice,
    ServingSnapshot,
    choose_models,
    predict,
)
from messages.codec import BodyError, PredictQuery, decode_predict_query
from messages.openapi import PREDICT_OPENAPI_JSON
from messages.protocol import (
    CollectionSwitched,
    Forwarded,
    Init,
    ModelPublished,
    Prediction,
    PredictRequest,
)
from storage.registry import ModelRecord
from storage.sqlite_features import SQLiteFeatureStore
from storage.sqlite_registry import SQLiteModelRegistry

__all__ = ["Predictor", "load_serving_model"]


def load_serving_model(record: ModelRecord, artifact: bytes) -> LoadedModel:
    """A registry version as a ``LoadedModel`` (skops artifact: no code runs on load)."""
    pipeline = load_model(artifact)
    names = tuple(json.loads(record.lineage)["feature_collection"]["features"])
    fast = ServingModel.from_pipeline(pipeline, version=record.version,
                                      feature_collection_id=record.feature_collection_id,
                                      feature_names=names)
    return LoadedModel(record.version, record.feature_collection_id, names, fast.predict_one)


def _served(snapshot: ServingSnapshot) -> ServingChoice:
    """The choice a snapshot serves, to compare with a new one."""
    first, fallback = snapshot.champion, snapshot.fallback
    return ServingChoice(first.version if first else None,
                         fallback.version if fallback else None, snapshot.stand_in,
                         snapshot.reason if first is None or snapshot.stand_in else "")


class Predictor(Worker):
    """Answers predictions from the champion; swaps models on ``ModelPublished``."""

    role = "predictor"

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = ServingSnapshot()
        self.registry: SQLiteModelRegistry | None = None
        self.features: SQLiteFeatureStore | None = None  # actor thread only
        self.edge: HttpEdge | None = None
        self.counters = Counters(("ok", "fallback", "bad_request", "unavailable"))
        self._edge_local = threading.local()

    def on_start(self, init: Init) -> None:
        settings = init.settings
        timeout = settings.storage.busy_timeout_s
        self.registry = SQLiteModelRegistry(settings.data_path / "models.sqlite",
                                            busy_timeout_s=timeout)
        self.features = SQLiteFeatureStore(settings.data_path / "features.sqlite",
                                           busy_timeout_s=timeout)
        self._refresh()
        routes = [
            Route("POST", "/model", self._post_model),
            Route("GET", "/health", self._health, public=True),
            Route("GET", "/metrics", self._metrics),
            Route("GET", "/openapi.json", _openapi, public=True),
        ]
        self.edge = HttpEdge(
            host=settings.predict.host, port=settings.predict.port, routes=routes,
            tokens=settings.predict.tokens, max_body_bytes=settings.predict.max_body_bytes,
            idle_timeout_s=settings.predict.idle_timeout_s,
            max_pending=settings.predict.max_pending, name=self.name,
            on_error=lambda exc, req: self.log.error("edge_error", error=repr(exc)),
        )
        self.edge.start()
        self.wakeupAfter(settings.predict.refresh_interval_s, payload="refresh")

    def on_stop(self) -> None:
        if self.edge is not None:
            self.edge.stop()
        for store in (self.registry, self.features):
            if store is not None:
                store.close()

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
            return
        loaded = {m.version: m for m in (current.champion, current.fallback) if m is not None}

        def load(wanted: int | None) -> LoadedModel | None:
            if wanted is None:
                return None
            if wanted not in loaded:
                loaded[wanted] = load_serving_model(records[wanted], registry.artifact(wanted))
            return loaded[wanted]

        first, fallback = load(choice.first), load(choice.fallback)
        # One assignment: the swap.
        self.snapshot = ServingSnapshot(first, fallback, choice.stand_in,
                                        choice.reason or NO_MODEL_YET)
        event = self.log.warning if choice.stand_in or first is None else self.log.info
        event("model_loaded", version=choice.first, stand_in=choice.stand_in,
              fallback_version=choice.fallback, active_collection_id=active,
              reason=choice.reason or None)

    def on_ModelPublished(self, msg: ModelPublished, sender: Any) -> None:  # noqa: N802
        self._refresh()

    def on_CollectionSwitched(self, msg: CollectionSwitched, sender: Any) -> None:  # noqa: N802
        self._refresh()

    def on_timer(self, payload: Any) -> None:
        if payload == "refresh":
            assert self.settings is not None
            try:
                self._refresh()
            finally:
                self.wakeupAfter(self.settings.predict.refresh_interval_s, payload="refresh")

    # --- answering ----------------------------------------------------------------------

    def on_Forwarded(self, msg: Forwarded, sender: Any) -> None:  # noqa: N802
        request = msg.message
        if not isinstance(request, PredictRequest):
            return
        assert self.features is not None
        assert self.settings is not None
        query = PredictQuery(request.location_id, request.features, request.deadline_ms)
        answer = predict(self.snapshot, query, self.features.latest_row, request.correlation_id,
                         deadline_ms=self.settings.predict.deadline_ms)
        self.send(msg.reply_to, answer)

    def _edge_features(self) -> SQLiteFeatureStore:
        store = getattr(self._edge_local, "features", None)
        if store is None:
            assert self.settings is not None
            store = SQLiteFeatureStore(self.settings.data_path / "features.sqlite",
                                       busy_timeout_s=self.settings.storage.busy_timeout_s)
            self._edge_local.features = store
        return store

    def _lookup(self, collection_id: int, location_id: int) -> FeatureRow | None:
        return self._edge_features().latest_row(collection_id, location_id)

    def _post_model(self, request: Request) -> Response:
        try:
            query = decode_predict_query(request.body, request.headers.get("content-type"))
        except BodyError as exc:
            self.counters.bump("bad_request")
            return Response.json(exc.status, {"error": f"{exc.code}: {exc.detail}"})
        assert self.settings is not None
        answer = predict(self.snapshot, query, self._lookup,
                         deadline_ms=self.settings.predict.deadline_ms)
        if isinstance(answer, Prediction):
            self.counters.bump("fallback" if answer.fallback else "ok")
            return Response.json(200, {
                "label": answer.label, "probability": answer.probability,
                "model_version": answer.model_version,
                "feature_collection_id": answer.feature_collection_id,
                "fallback": answer.fallback,
            })
        self.counters.bump("unavailable" if answer.status == 503 else "bad_request")
        return Response.json(answer.status, {"error": answer.reason})

    def _health(self, request: Request) -> Response:
        champion = self.snapshot.champion
        return Response.json(200, {"status": "ok", "actor": self.name,
                                   "model_version": champion.version if champion else None})

    def _metrics(self, request: Request) -> Response:
        champion = self.snapshot.champion
        values = self.counters.snapshot()
        lines = ["# HELP rml_predictions_total Predictions answered by this predictor.",
                 "# TYPE rml_predictions_total counter"]
        lines += [f'rml_predictions_total{{predictor="{self.name}",outcome="{k}"}} {v}'
                  for k, v in values.items()]
        lines += ["# HELP rml_model_version The champion version being served.",
                  "# TYPE rml_model_version gauge",
                  f'rml_model_version{{predictor="{self.name}"}} '
                  f"{champion.version if champion else 0}",
                  "# HELP rml_edge_requests_total HTTP requests served by this edge.",
                  "# TYPE rml_edge_requests_total counter",
                  f'rml_edge_requests_total{{predictor="{self.name}"}} '
                  f"{self.edge.requests_served if self.edge else 0}"]
        return Response(200, ("\n".join(lines) + "\n").encode(),
                        content_type="text/plain; version=0.0.4")


def _openapi(request: Request) -> Response:
    """The predict service's OpenAPI document (public, like ``/health``: it holds no secret)."""
    return Response(200, PREDICT_OPENAPI_JSON)
