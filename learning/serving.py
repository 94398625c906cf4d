"""Answering one prediction from an immutable snapshot of the serving models. Pure.

The predictor's HTTP edge and its actor both call ``predict`` with the snapshot
the actor last swapped in and a way to look up a location's online features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from learning.collections import FeatureRow
from messages.codec import PredictQuery
from messages.protocol import Prediction, PredictionError

__all__ = ["LoadedModel", "ServingSnapshot", "predict"]

RowLookup = Callable[[int, int], FeatureRow | None]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A registry version ready to serve: which features it takes, in which order."""

    version: int
    feature_collection_id: int
    feature_names: tuple[str, ...]
    predict_one: Callable[[Sequence[float]], float]  # P(label is True)


@dataclass(frozen=True, slots=True)
class ServingSnapshot:
    """What a predictor serves: the champion, and a fallback for when it cannot answer."""

    champion: LoadedModel | None = None
    fallback: LoadedModel | None = None


def _values(model: LoadedModel, query: PredictQuery, lookup: RowLookup,
            correlation_id: str) -> Sequence[float] | PredictionError:
    if query.features is not None:
        given = dict(query.features)
        missing = [n for n in model.feature_names if n not in given]
        if missing:
            takes = ", ".join(model.feature_names)
            return PredictionError(correlation_id, f"missing_feature: {', '.join(missing)} "
                                   f"(model {model.version} takes {takes})")
        unknown = sorted(set(given) - set(model.feature_names))
        if unknown:
            return PredictionError(correlation_id, f"unknown_feature: {', '.join(unknown)}")
        return [given[n] for n in model.feature_names]
    assert query.location_id is not None
    row = lookup(model.feature_collection_id, query.location_id)
    if row is None:
        return PredictionError(correlation_id, f"unknown_location: no features for location "
                               f"{query.location_id} yet")
    return row.values


def _answer(model: LoadedModel, query: PredictQuery, lookup: RowLookup, correlation_id: str,
            fallback: bool) -> Prediction | PredictionError:
    values = _values(model, query, lookup, correlation_id)
    if isinstance(values, PredictionError):
        return values
    probability = float(model.predict_one(values))
    return Prediction(correlation_id, probability >= 0.5, probability, model.version,
                      model.feature_collection_id, fallback)


def predict(snapshot: ServingSnapshot, query: PredictQuery, lookup: RowLookup,
            correlation_id: str = "") -> Prediction | PredictionError:
    """The champion's answer; the fallback model's (marked) when the champion fails."""
    if snapshot.champion is None:
        return PredictionError(correlation_id, "no model has been published yet", 503)
    try:
        return _answer(snapshot.champion, query, lookup, correlation_id, False)
    except Exception as exc:  # a model error must not become a failed request
        if snapshot.fallback is None:
            return PredictionError(correlation_id, f"model error: {type(exc).__name__}", 503)
    try:
        return _answer(snapshot.fallback, query, lookup, correlation_id, True)
    except Exception as exc:
        return PredictionError(correlation_id, f"model error: {type(exc).__name__}", 503)
