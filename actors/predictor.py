"""Predictor: serves ``POST /model`` from its own HTTP edge and ``PredictRequest`` via Thespian.

Owns: an ``HttpEdge`` thread; an immutable ``ServingSnapshot`` (champion and
fallback) that it swaps whole, so the edge never sees half a model.
Receives: ``ModelPublished`` (swap now), a timer (re-read the champion, in
case a hint was lost), ``Forwarded(PredictRequest)`` (answer ``reply_to``).
Sends: ``Prediction`` / ``PredictionError``.
On start it loads the champion from the registry: never from memory.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from actors.base import Worker
from actors.edge import HttpEdge, Request, Response, Route
from learning.artifacts import load_model
from learning.collections import FALLBACK_COLLECTION_ID, FeatureRow
from learning.serving import LoadedModel, ServingSnapshot, predict
from messages.codec import BodyError, PredictQuery, decode_predict_query
from messages.protocol import Forwarded, Init, ModelPublished, Prediction, PredictRequest
from storage.registry import ModelRecord
from storage.sqlite_features import SQLiteFeatureStore
from storage.sqlite_registry import SQLiteModelRegistry

__all__ = ["Predictor", "load_serving_model"]


def load_serving_model(record: ModelRecord, artifact: bytes) -> LoadedModel:
    """A registry version as a ``LoadedModel`` (skops artifact: no code runs on load)."""
    pipeline = load_model(artifact)
    names = tuple(json.loads(record.lineage)["feature_collection"]["features"])
    try:
        from learning.inference import ServingModel

        fast = ServingModel.from_pipeline(pipeline, version=record.version,
                                          feature_collection_id=record.feature_collection_id,
                                          feature_names=names)
        return LoadedModel(record.version, record.feature_collection_id, names, fast.predict_one)
    except ImportError:
        import numpy as np

        column = list(pipeline.classes_).index(True)

        def predict_one(values: Any) -> float:
            row = np.asarray(values, dtype=np.float64).reshape(1, -1)
            return float(pipeline.predict_proba(row)[0, column])

        return LoadedModel(record.version, record.feature_collection_id, names, predict_one)


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = {"ok": 0, "fallback": 0, "bad_request": 0, "unavailable": 0}

    def bump(self, name: str) -> None:
        with self.lock:
            self.values[name] += 1


class Predictor(Worker):
    """Answers predictions from the champion; swaps models on ``ModelPublished``."""

    role = "predictor"

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = ServingSnapshot()
        self.registry: SQLiteModelRegistry | None = None
        self.features: SQLiteFeatureStore | None = None  # actor thread only
        self.edge: HttpEdge | None = None
        self.counters = _Counters()
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
        """Load the registry's champion (and a fallback) when it differs from what we serve."""
        assert self.registry is not None
        champion = self.registry.champion()
        current = self.snapshot.champion
        if champion is None or (current is not None and current.version == champion.version):
            return
        loaded = load_serving_model(champion, self.registry.artifact(champion.version))
        fallback = self.snapshot.fallback
        if champion.feature_collection_id != FALLBACK_COLLECTION_ID:
            record = self.registry.champion_for_collection(FALLBACK_COLLECTION_ID)
            if record is not None and (fallback is None or fallback.version != record.version):
                fallback = load_serving_model(record, self.registry.artifact(record.version))
        else:
            fallback = None
        self.snapshot = ServingSnapshot(loaded, fallback)  # one assignment: the swap
        self.log.info("model_loaded", version=loaded.version,
                      feature_collection_id=loaded.feature_collection_id,
                      fallback_version=fallback.version if fallback else None)

    def on_ModelPublished(self, msg: ModelPublished, sender: Any) -> None:  # noqa: N802
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
        query = PredictQuery(request.location_id, request.features)
        answer = predict(self.snapshot, query, self.features.latest_row, request.correlation_id)
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
        answer = predict(self.snapshot, query, self._lookup)
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
        with self.counters.lock:
            values = dict(self.counters.values)
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
