"""Answering one prediction from an immutable snapshot of the serving models. Pure.

The predictor's HTTP edge and its actor both call ``predict`` with the snapshot
the actor last swapped in and a way to look up a location's online features.
``choose_models`` decides what goes into that snapshot: a model is only ever
served on a collection with no invalid feature, so it is never asked for
features it was not trained on, or for values known to be broken.

Deadlines are measured, not enforced by interruption: a tree answers in
microseconds, so the cost of a thread or a timer per request would dwarf the
work. The first model's path (feature lookup and model) is timed; an answer
that arrives after the deadline is discarded for the fallback model's, and so
is an error. The fallback model is the last resort and answers whatever it
takes; only when there is none, or it fails too, is the request refused (503).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from learning.features.collections import FALLBACK_COLLECTION_ID, FeatureRow
from learning.models.lineage import feature_names_of
from learning.serving.compiled import (
    CompiledFormError,
    CompiledModel,
    MissingFeature,
    UnknownFeature,
    features_from_mapping,
)
from learning.serving.row_table import RowLookup
from messages._build import builder
from messages.codec import PredictQuery
from messages.protocol import Prediction, PredictionError
from storage.errors import StoreError
from storage.registry import CHAMPION, RETIRED, SHADOW, ModelRecord

__all__ = [
    "NO_MODEL_YET",
    "HeldRows",
    "load_serving_model",
    "LoadedModel",
    "RegisteredModel",
    "RowLookup",
    "ServingChoice",
    "ServingSnapshot",
    "choose_models",
    "feature_values",
    "predict",
]



class HeldRows:
    """A ``RowLookup`` that keeps the last row it read for each (collection, location) and
    answers with it while the feature store cannot be reached: in an outage a predictor
    goes on answering from the model and the rows it holds (a row as fresh as the last
    request for that location saw). Not thread-safe: one per thread that looks rows up."""

    def __init__(self, read: RowLookup, limit: int = 100_000) -> None:
        self._read = read
        self._limit = limit
        self._held: dict[tuple[int, int], FeatureRow] = {}

    def __call__(self, collection_id: int, location_id: int) -> FeatureRow | None:
        key = (collection_id, location_id)
        try:
            row = self._read(collection_id, location_id)
        except StoreError:
            held = self._held.get(key)
            if held is None:
                raise
            return held
        if row is not None:
            self._held.pop(key, None)  # newest last: the oldest goes first past the limit
            self._held[key] = row
            if len(self._held) > self._limit:
                del self._held[next(iter(self._held))]
        return row

_SERVABLE = frozenset({CHAMPION, RETIRED})
_MAX_PREPARED = 1_000_000  # locations' inputs kept per model, at most
NO_MODEL_YET = "no model has been published yet"
_prediction = builder(Prediction)  # the hot path's Prediction(...), see messages._build


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A registry version ready to serve: which features it takes, in which order."""

    version: int
    feature_collection_id: int
    feature_names: tuple[str, ...]
    predict_one: Callable[[Sequence[float]], float]  # P(label is True)
    # A compiled model's two halves (``predict_one`` is walk(prepare(values))), so a row's
    # prepared input is made once per row and kept (``prepared``), not once per request.
    prepare: Callable[[Sequence[float]], Any] | None = None
    walk: Callable[[Any], float] | None = None
    # location -> (the row values it was made from, their input): any thread may replace an
    # entry (one assignment); an entry is used only for the very same values object.
    prepared: dict[int, tuple[Sequence[float], Any]] = field(default_factory=dict, repr=False,
                                                             compare=False)
    # The feature names sorted, as a query's features come; and what takes values given in
    # that order into the model's.
    sorted_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    in_model_order: Callable[[tuple[float, ...]], tuple[float, ...]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = sorted(self.feature_names)
        place = {name: i for i, name in enumerate(ordered)}
        order = [place[n] for n in self.feature_names]
        object.__setattr__(self, "sorted_names", tuple(ordered))
        object.__setattr__(self, "in_model_order",
                           operator.itemgetter(*order) if len(order) > 1 else tuple)


@dataclass(frozen=True, slots=True)
class ServingSnapshot:
    """What a predictor serves: the model asked first, and a fallback for when it cannot answer.

    ``champion`` is the registry's champion, or a stand-in when the champion's collection
    has an invalid feature (``stand_in``: its answers are marked ``fallback`` too).
    ``reason`` says why there is no model to ask (the 503's reason) or why a stand-in.
    ``shadow`` is a model serving in shadow: asked too, off the answer, never returned.
    """

    champion: LoadedModel | None = None
    fallback: LoadedModel | None = None
    stand_in: bool = False
    reason: str = NO_MODEL_YET
    shadow: LoadedModel | None = None


class RegisteredModel(Protocol):
    """What ``choose_models`` needs of a registry record."""

    @property
    def version(self) -> int: ...

    @property
    def status(self) -> str: ...

    @property
    def feature_collection_id(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ServingChoice:
    """Versions to serve: ``first`` (None: nothing servable, ``reason`` says why) and
    ``fallback``; ``stand_in`` when ``first`` is not the champion; ``shadow``, a model serving
    in shadow beside ``first``."""

    first: int | None
    fallback: int | None
    stand_in: bool
    reason: str
    shadow: int | None = None


def choose_models(
    records: Iterable[RegisteredModel], usable_collections: frozenset[int],
    active_collection: int | None,
) -> ServingChoice:
    """The champion if its collection is usable; else the newest champion-or-retired model on
    the active collection, else on any usable one (a stand-in). The fallback is the newest
    other such model on the fallback collection, else the newest other one. The shadow is the
    newest model in shadow on a usable collection, asked only beside a served model."""
    records = tuple(records)
    champion = next((r for r in records if r.status == CHAMPION), None)
    if champion is None:
        return ServingChoice(None, None, False, NO_MODEL_YET)
    servable = sorted((r for r in records if r.status in _SERVABLE
                       and r.feature_collection_id in usable_collections),
                      key=lambda r: r.version, reverse=True)
    reason = ""
    if champion in servable:
        first: RegisteredModel | None = champion
    else:
        reason = (f"champion {champion.version} is on feature collection "
                  f"{champion.feature_collection_id}, which has an invalid feature")
        first = next((r for r in servable if r.feature_collection_id == active_collection),
                     servable[0] if servable else None)
        if first is None:
            return ServingChoice(None, None, False, f"no model on a valid feature collection "
                                 f"yet ({reason})")
    assert first is not None
    others = [r for r in servable if r is not first]
    fallback = next((r for r in others if r.feature_collection_id == FALLBACK_COLLECTION_ID),
                    others[0] if others else None)
    shadow = max((r.version for r in records if r.status == SHADOW
                  and r.feature_collection_id in usable_collections), default=None)
    return ServingChoice(first.version, fallback.version if fallback else None,
                         first is not champion, reason, shadow)


def feature_values(model: LoadedModel, query: PredictQuery, lookup: RowLookup,
                   correlation_id: str = "") -> Sequence[float] | PredictionError:
    """The query's feature values in ``model``'s order (from the query, or the location's
    latest row of the model's collection), or the 400 that says what is wrong."""
    given = query.features
    if given is not None:
        # The usual case: exactly the model's names (the codec sorts them and checked every
        # value is a finite number), taken in the model's order without a mapping.
        names, values = zip(*given, strict=True) if given else ((), ())
        if names == model.sorted_names:
            return model.in_model_order(values)
        try:
            return features_from_mapping(model.feature_names, dict(given))
        except MissingFeature as exc:
            takes = ", ".join(model.feature_names)
            return PredictionError(correlation_id, f"missing_feature: {', '.join(exc.names)} "
                                   f"(model {model.version} takes {takes})")
        except UnknownFeature as exc:  # values are numbers: the codec checked them
            return PredictionError(correlation_id, f"unknown_feature: {', '.join(exc.names)}")
    assert query.location_id is not None
    row = lookup(model.feature_collection_id, query.location_id)
    if row is None:
        return PredictionError(correlation_id, f"unknown_location: no features for location "
                               f"{query.location_id} yet")
    return row.values


def _answer(model: LoadedModel, query: PredictQuery, lookup: RowLookup, correlation_id: str,
            fallback: bool) -> Prediction | PredictionError:
    values = feature_values(model, query, lookup, correlation_id)
    if isinstance(values, PredictionError):
        return values
    location, walk, prepare = query.location_id, model.walk, model.prepare
    if location is not None and walk is not None and prepare is not None:
        kept = model.prepared.get(location)
        if kept is not None and kept[0] is values:
            x = kept[1]
        else:
            x = prepare(values)
            if len(model.prepared) >= _MAX_PREPARED:
                model.prepared.clear()
            model.prepared[location] = (values, x)
        probability = float(walk(x))
    else:
        probability = float(model.predict_one(values))
    return _prediction(correlation_id, probability >= 0.5, probability, model.version,
                       model.feature_collection_id, fallback)


def predict(snapshot: ServingSnapshot, query: PredictQuery, lookup: RowLookup,
            correlation_id: str = "", *, deadline_ms: float | None = None,
            clock: Callable[[], float] = time.perf_counter,
            on_fallback: Callable[[str], None] | None = None) -> Prediction | PredictionError:
    """The first model's answer within the deadline (the query's own, else ``deadline_ms``;
    None: no deadline); the fallback model's (marked) when it errors or overruns; a 503
    when neither can answer. Bad input (a 400) is answered as is, never retried.
    ``on_fallback`` hears why the first model's answer was not used: ``"error"`` or
    ``"deadline"``."""
    first = snapshot.champion
    if first is None:
        return PredictionError(correlation_id, snapshot.reason, 503)
    deadline = query.deadline_ms if query.deadline_ms is not None else deadline_ms
    started = clock()
    try:
        answer = _answer(first, query, lookup, correlation_id, snapshot.stand_in)
    except Exception as exc:  # a model error must not become a failed request
        problem = f"model error: model {first.version} raised {type(exc).__name__}"
        cause = "error"
    else:
        elapsed_ms = (clock() - started) * 1000.0
        if isinstance(answer, PredictionError) or deadline is None or elapsed_ms <= deadline:
            return answer
        problem = (f"deadline_exceeded: model {first.version} took {elapsed_ms:.3g} ms, "
                   f"over the deadline of {deadline:g} ms")
        cause = "deadline"
    if on_fallback is not None:
        on_fallback(cause)
    fallback = snapshot.fallback
    if fallback is None:
        return PredictionError(correlation_id, f"{problem}; no fallback model", 503)
    try:
        answer = _answer(fallback, query, lookup, correlation_id, True)
    except Exception as exc:
        return PredictionError(correlation_id, f"{problem}; fallback model {fallback.version} "
                               f"raised {type(exc).__name__}", 503)
    if isinstance(answer, PredictionError):
        return PredictionError(correlation_id, f"{problem}; fallback model {fallback.version}: "
                               f"{answer.reason}", 503)
    return answer


def load_serving_model(record: ModelRecord, compiled: bytes | None,
                       artifact: Callable[[], bytes]) -> LoadedModel:
    """A registry version as a ``LoadedModel``: from its compiled form (numpy only), or
    else (a version registered before compiled forms, or of a shape with no fast path) from
    its skops artifact, importing scikit-learn into this process on first use.

    Raises ``CompiledFormError`` for a corrupt form, ``UntrustedArtifact`` for an artifact
    that fails its checks."""
    names = feature_names_of(record.lineage)
    if compiled is not None:
        model = CompiledModel.from_bytes(compiled)
        if model.n_features != len(names):
            raise CompiledFormError(f"model version {record.version}'s compiled form takes "
                                    f"{model.n_features} features, its lineage names "
                                    f"{len(names)}")
        return LoadedModel(record.version, record.feature_collection_id, names,
                           model.predict_one, model.prepare, model.walk.predict_one)
    from learning.models.artifacts import load_model
    from learning.serving.inference import ServingModel

    fast = ServingModel.from_pipeline(load_model(artifact()), version=record.version,
                                      feature_collection_id=record.feature_collection_id,
                                      feature_names=names)
    return LoadedModel(record.version, record.feature_collection_id, names, fast.predict_one)
