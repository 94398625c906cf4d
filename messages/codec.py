"""The external wire: strict msgpack/JSON decoding of batches and queries, and encoding answers.

This is the one place where bytes from gateways and services become facts. Decoding never
raises anything but ``BodyError``: a body that cannot be used as a whole is a ``BodyError``
(an HTTP 400, or 415 for an unknown media type); a bad item inside a usable batch becomes one
``ItemError`` and the good items next to it are kept. Validation is plain loops over dicts,
with no exception on the happy path, because the collector decodes ~100k readings/s per core.

This module is the public surface; the work is done in two private layers, cut where the
kind of failure changes. ``_wire_parse`` turns bytes into plain values or fails the whole
body (media type, UTF-8, depth, msgpack limits); ``_wire_fields`` turns one plain value into
a fact or a per-item problem. What is left here is the shape of each body (which top-level
keys, how many items) and the encoding of answers, the only parts callers name.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgpack
import orjson

from messages._build import builder
from messages._wire_fields import (
    MAX_ID_CHARS,
    MAX_LOCATION,
    Problem,
    identifier_problem,
    location_problem,
    number_problem,
    shape_problem,
    to_outcome,
    to_reading,
)
from messages._wire_parse import (
    MSGPACK_MEDIA_TYPES,
    BodyError,
    DuplicateKeys,
    UnsupportedMediaType,
    WireFormat,
    has_long_digits,
    kind_of,
    parse,
    show,
    wire_format,
)
from messages.facts import ItemError, Outcome, Reading
from messages.protocol import Prediction

__all__ = [
    "MSGPACK_MEDIA_TYPES",
    "BodyError",
    "DecodedBatch",
    "encode_prediction_json",
    "prediction_to_wire",
    "PredictQuery",
    "UnsupportedMediaType",
    "WireFormat",
    "decode_message",
    "decode_outcomes",
    "decode_predict_query",
    "decode_readings",
    "encode",
    "encode_outcomes",
    "encode_readings",
    "ingest_answer",
    "outcome_to_wire",
    "reading_to_wire",
    "wire_format",
]

T = TypeVar("T")

_MAX_FEATURES = 256
_MAX_FLOAT = int(sys.float_info.max)
_MAX_DEADLINE_MS = 60_000


@dataclass(frozen=True, slots=True)
class DecodedBatch(Generic[T]):
    """The valid items of a batch, each one's index in the body, and the rejected items."""

    items: tuple[T, ...]
    indices: tuple[int, ...]
    rejected: tuple[ItemError, ...]


@dataclass(frozen=True, slots=True)
class PredictQuery:
    """A prediction request: exactly one of a location (latest features) or explicit features,
    and optionally its own deadline (else the predictor's ``[predict] deadline_ms``)."""

    location_id: int | None
    features: tuple[tuple[str, float], ...] | None
    deadline_ms: float | None = None


_query = builder(PredictQuery)  # the hot path's PredictQuery(...), see messages._build


# --- decoding ----------------------------------------------------------------------------------


def _body_object(doc: Any, fields: Sequence[str], what: str) -> dict[str, Any]:
    """The top-level object, if it is one and names no key outside ``fields``."""
    if type(doc) is not dict or not doc.keys() <= set(fields):
        raise BodyError(*shape_problem(doc, fields, what))
    return doc


def _decode_batch(
    body: bytes,
    content_type: str | None,
    key: str,
    to_fact: Callable[[Any, int], T | Problem],
    latest: int,
    max_items: int,
) -> DecodedBatch[T]:
    doc = _body_object(parse(body, content_type), (key,), f"a /{key} body")
    if key not in doc:
        raise BodyError("missing_field", f"{key}: required")
    items = doc[key]
    if type(items) is not list:
        raise BodyError("wrong_type", f"{key}: expected an array, got {kind_of(items)}")
    return _decode_items(items, key, to_fact, latest, max_items)


def _decode_items(items: list[Any], key: str, to_fact: Callable[[Any, int], T | Problem],
                  latest: int, max_items: int) -> DecodedBatch[T]:
    if len(items) > max_items:
        raise BodyError("too_many_items", f"{key}: {len(items)} items, at most {max_items}")
    kept: list[T] = []
    indices: list[int] = []
    rejected: list[ItemError] = []
    for index, item in enumerate(items):
        fact = to_fact(item, latest)
        if isinstance(fact, tuple):
            rejected.append(ItemError(index, fact[0], fact[1]))
        else:
            kept.append(fact)
            indices.append(index)
    return DecodedBatch(tuple(kept), tuple(indices), tuple(rejected))


def decode_readings(
    body: bytes,
    content_type: str | None,
    *,
    now_ms: int,
    max_future_ms: int = 300_000,
    max_items: int = 100_000,
) -> DecodedBatch[Reading]:
    """Decode ``{"readings": [...]}``; raises only ``BodyError``, bad items become ItemErrors."""
    latest = now_ms + max_future_ms
    return _decode_batch(body, content_type, "readings", to_reading, latest, max_items)


def decode_outcomes(
    body: bytes,
    content_type: str | None,
    *,
    now_ms: int,
    max_future_ms: int = 300_000,
    max_items: int = 100_000,
) -> DecodedBatch[Outcome]:
    """Decode ``{"outcomes": [...]}``; raises only ``BodyError``, bad items become ItemErrors."""
    latest = now_ms + max_future_ms
    return _decode_batch(body, content_type, "outcomes", to_outcome, latest, max_items)


def decode_message(
    payload: bytes,
    content_type: str | None,
    kind: str,
    *,
    now_ms: int,
    max_future_ms: int = 300_000,
    max_items: int = 100_000,
) -> DecodedBatch[Any]:
    """An MQTT message's ``kind`` ("readings" or "outcomes"): a batch (``{"readings":
    [...]}``), an array of items or one item; JSON or msgpack (``content_type``, else sniffed:
    JSON starts with ``{`` or ``[``). Raises only ``BodyError``."""
    if content_type is None:
        head = payload.lstrip()[:1]
        content_type = "application/json" if head in (b"{", b"[") else "application/msgpack"
    doc = parse(payload, content_type)
    to_fact: Callable[[Any, int], Any] = to_reading if kind == "readings" else to_outcome
    if type(doc) is dict and doc.keys() == {kind}:
        doc = doc[kind]
        if type(doc) is not list:
            raise BodyError("wrong_type", f"{kind}: expected an array, got {kind_of(doc)}")
    items = doc if type(doc) is list else [doc]
    return _decode_items(items, kind, to_fact, now_ms + max_future_ms, max_items)


def _deadline_ms(doc: dict[str, Any]) -> float | None:
    if "deadline_ms" not in doc:
        return None
    value = doc["deadline_ms"]
    problem = number_problem(value)
    if problem is None and not 0 < value <= _MAX_DEADLINE_MS:
        problem = "out_of_range", f"expected more than 0 and at most {_MAX_DEADLINE_MS}"
    if problem is not None:
        raise BodyError(problem[0], f"deadline_ms: {problem[1]}")
    return float(value)


# The body nearly every prediction has, ``{"location_id": n}`` in JSON: matched whole, it
# decodes to what the general path gives (one key, an integer with no leading zero), for a
# fifth of the cost. JSON's whitespace only; anything else takes the general path.
_LOCATION_ONLY = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"location_id"[ \t\n\r]*:[ \t\n\r]*'
                            rb"(0|[1-9][0-9]{0,9})[ \t\n\r]*\}[ \t\n\r]*")
_JSON_TYPES = frozenset({None, "", "application/json"})


def _features_only(body: bytes) -> PredictQuery | None:
    """``{"features": {name: finite float, ...}}`` and nothing else, in one pass: what the
    general path decodes it to, or None for anything else (which takes the general path,
    and its named errors). No key can repeat: the body's ':' count is its keys' count."""
    if has_long_digits(body):
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    features = doc.get("features") if type(doc) is dict and len(doc) == 1 else None
    if (type(features) is not dict or not 0 < len(features) <= _MAX_FEATURES
            or body.count(b":") != 1 + len(features)):
        return None
    pairs = []
    for name, value in features.items():
        if not (name.isascii() and 0 < len(name) <= MAX_ID_CHARS and type(value) is float
                and value - value == 0.0):
            return None
        pairs.append((name, value))
    pairs.sort()
    return _query(None, tuple(pairs), None)


def decode_predict_query(body: bytes, content_type: str | None) -> PredictQuery:
    """Decode ``{"location_id": n}`` or ``{"features": {name: number}}``, each with an optional
    ``"deadline_ms"`` (a number in (0, 60000]); else ``BodyError``."""
    if content_type in _JSON_TYPES and type(body) is bytes:
        match = _LOCATION_ONLY.fullmatch(body)
        if match is not None:
            location = int(match[1])
            if location <= MAX_LOCATION:
                return _query(location, None, None)
        query = _features_only(body)
        if query is not None:
            return query
    doc = _body_object(parse(body, content_type), ("location_id", "features", "deadline_ms"),
                       "a query")
    deadline_ms = _deadline_ms(doc)
    given = ("location_id" in doc) + ("features" in doc)
    if given != 1:
        if not given:
            raise BodyError("missing_field", "give location_id or features")
        raise BodyError("conflicting_fields", "give location_id or features, not both")
    if "location_id" in doc:
        problem = location_problem(doc["location_id"])
        if problem is not None:
            raise BodyError(problem[0], f"location_id: {problem[1]}")
        return PredictQuery(doc["location_id"], None, deadline_ms)
    features = doc["features"]
    if not isinstance(features, dict):
        raise BodyError("wrong_type", f"features: expected an object, got {kind_of(features)}")
    if isinstance(features, DuplicateKeys):
        raise BodyError("duplicate_field", f"features: {show(features.duplicate)} given twice")
    if len(features) > _MAX_FEATURES:
        raise BodyError("too_many_items", f"features: {len(features)}, at most {_MAX_FEATURES}")
    pairs = []
    for name, value in features.items():
        # The usual case inline (an ASCII name, a finite float); the checks name the rest.
        if not (type(name) is str and name.isascii() and 0 < len(name) <= MAX_ID_CHARS
                and type(value) is float and value - value == 0.0):
            problem = identifier_problem(name) or number_problem(value)
            if problem is None and type(value) is int and not -_MAX_FLOAT <= value <= _MAX_FLOAT:
                problem = "out_of_range", f"expected a number a float can hold, got {show(value)}"
            if problem is not None:
                raise BodyError(problem[0], f"features[{show(name)}]: {problem[1]}")
        pairs.append((name, float(value)))
    pairs.sort()
    return PredictQuery(None, tuple(pairs), deadline_ms)


# --- encoding ----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot put {type(value).__name__} on the wire")


def encode(payload: Mapping[str, Any], fmt: WireFormat) -> bytes:
    """Encode an answer or a batch: compact UTF-8 JSON (no NaN) or msgpack with bin types."""
    if fmt == "json":
        text = json.dumps(
            payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_plain
        )
        return text.encode("utf-8")
    if fmt == "msgpack":
        packed: bytes = msgpack.packb(payload, use_bin_type=True, default=_plain)
        return packed
    raise ValueError(f"unknown wire format {fmt!r}")


_PREDICTION = b'{"label":%s,"probability":%s,"model_version":%d,"feature_collection_id":%d,' \
    b'"fallback":%s}'


def prediction_to_wire(answer: Prediction) -> dict[str, Any]:
    """A prediction as the answer's plain object (what ``encode_prediction_json`` writes)."""
    return {"label": answer.label, "probability": answer.probability,
            "model_version": answer.model_version,
            "feature_collection_id": answer.feature_collection_id,
            "fallback": answer.fallback}


def encode_prediction_json(answer: Prediction) -> bytes:
    """The answer's JSON, as ``json.dumps`` (compact) spells it, without its generic encoder:
    a finite float's ``repr`` is JSON's spelling of it; anything else takes ``json.dumps``."""
    probability = answer.probability
    if (type(probability) is float and math.isfinite(probability)
            and type(answer.model_version) is int
            and type(answer.feature_collection_id) is int):
        return _PREDICTION % (b"true" if answer.label else b"false",
                              repr(probability).encode(), answer.model_version,
                              answer.feature_collection_id,
                              b"true" if answer.fallback else b"false")
    return json.dumps(prediction_to_wire(answer), separators=(",", ":"),
                      allow_nan=False).encode()


def reading_to_wire(r: Reading) -> dict[str, Any]:
    """A reading as the wire's plain object."""
    return {
        "sensor_id": r.sensor_id,
        "location_id": r.location_id,
        "reading_id": r.reading_id,
        "timestamp": r.timestamp,
        "animals_lower": r.animals_lower,
        "animals_upper": r.animals_upper,
        "percent_zebras": r.percent_zebras,
    }


def outcome_to_wire(o: Outcome) -> dict[str, Any]:
    """An outcome as the wire's plain object."""
    return {
        "location_id": o.location_id,
        "outcome_id": o.outcome_id,
        "timestamp": o.timestamp,
        "label": o.label,
    }


def encode_readings(readings: Iterable[Reading], fmt: WireFormat) -> bytes:
    """A ``POST /readings`` body, as gateways (and the simulator) send it."""
    return encode({"readings": [reading_to_wire(r) for r in readings]}, fmt)


def encode_outcomes(outcomes: Iterable[Outcome], fmt: WireFormat) -> bytes:
    """A ``POST /outcomes`` body."""
    return encode({"outcomes": [outcome_to_wire(o) for o in outcomes]}, fmt)


def ingest_answer(accepted: int, duplicates: int, rejected: Sequence[ItemError]) -> dict[str, Any]:
    """The collector's 200 answer: counts, and each rejected item's index, code and detail."""
    return {
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": [{"index": e.index, "error": e.error, "detail": e.detail} for e in rejected],
    }
