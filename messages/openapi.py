"""OpenAPI 3.1 documents for the two HTTP services: ingest (collectors) and predict.

The documents are built from the codec's own rules (the field tables and bounds in
``_wire_fields``, the limits in ``codec``), so a field or a bound cannot change in one place
and not the other: a rule this module cannot describe fails at import, and a test compares
the documents' required fields with the codec's.

``GET /openapi.json`` is public, like ``GET /health``: the document holds no secret, and a
client (or schemathesis) needs it to learn that every other route wants a bearer token.
The documents are served as the constant bytes ``INGEST_OPENAPI_JSON`` and
``PREDICT_OPENAPI_JSON``; ``ingest_document()`` and ``predict_document()`` return fresh dicts.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

from messages import _wire_fields as fields
from messages.codec import (
    _MAX_FEATURES,
    MSGPACK_MEDIA_TYPES,
    decode_outcomes,
    decode_readings,
)

__all__ = [
    "INGEST_OPENAPI_JSON",
    "MSGPACK_MEDIA_TYPES",
    "PREDICT_OPENAPI_JSON",
    "ingest_document",
    "predict_document",
]

OPENAPI_VERSION = "3.1.0"
_JSON = "application/json"
_Schema = dict[str, Any]


def _max_items(decode: Callable[..., Any]) -> int:
    """The batch limit the collector decodes with: the decoder's own default."""
    default = inspect.signature(decode).parameters["max_items"].default
    assert isinstance(default, int)
    return default


# --- the item schemas, one per field check ------------------------------------------------------

_IDENTIFIER: _Schema = {"type": "string", "minLength": 1, "maxLength": fields.MAX_ID_CHARS}
# JSON Schema counts 1.0 as an integer; the codec does not (it is a float on the wire).
_WHOLE = "Written as an integer: 1, not 1.0."
_ID_OR_INTEGER: _Schema = {
    "oneOf": [_IDENTIFIER, {"type": "integer", "minimum": -fields._MAX_INT_ID,
                            "maximum": fields._MAX_INT_ID - 1, "description": _WHOLE}],
    "description": "Text, or an integer: the same identity as its decimal string.",
}
_FIELD_SCHEMAS: dict[Callable[[Any], Any], _Schema] = {
    fields.identifier_problem: _ID_OR_INTEGER,
    fields.location_problem: {"type": "integer", "minimum": 0, "maximum": fields.MAX_LOCATION,
                              "description": _WHOLE},
    fields._bound: {"type": "number", "minimum": 0, "maximum": fields._MAX_ANIMALS,
                    "description": "An estimate's bound: a real number."},
    fields._timestamp: {
        "type": "integer",
        "minimum": 0,
        "description": "Milliseconds since the epoch, at most now + [ingest] max_future_ms. "
        + _WHOLE,
    },
    fields._share: {"type": "number", "minimum": 0, "maximum": 1},
    fields._label: {"type": "boolean"},
}


def _item_schema(checks: Sequence[tuple[str, Callable[[Any], Any]]], description: str,
                 aliases: dict[str, str]) -> _Schema:
    """An object of the checked fields, each by our name or the talk's (``aliases``), never
    both; every field but an optional one required. A check with no schema here is a
    KeyError."""
    spelled = {name: [name, *(alias for alias, ours in aliases.items() if ours == name)]
               for name, _ in checks}
    properties = {key: dict(_FIELD_SCHEMAS[check])
                  for name, check in checks for key in spelled[name]}
    rules: list[_Schema] = []
    for name, _ in checks:
        if len(spelled[name]) > 1:
            rules.append({"not": {"required": spelled[name]}})  # duplicate_field
        if name in fields._OPTIONAL:
            continue
        rules.append({"required": [name]} if len(spelled[name]) == 1 else
                     {"anyOf": [{"required": [key]} for key in spelled[name]]})
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "allOf": rules,
        "additionalProperties": False,
    }


def _error(description: str) -> _Schema:
    return {"type": "object", "description": description, "required": ["error"],
            "properties": {"error": {"type": "string"}}}


_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_BEARER = {"bearer": {"type": "http", "scheme": "bearer",
                      "description": "A token from the service's `tokens` setting."}}


def _json_answer(description: str, ref: _Schema, headers: _Schema | None = None) -> _Schema:
    answer: _Schema = {"description": description, "content": {_JSON: {"schema": ref}}}
    if headers:
        answer["headers"] = headers
    return answer


def _both_formats(description: str, ref: _Schema, headers: _Schema | None = None) -> _Schema:
    """An answer in the request's format: JSON, or msgpack for a msgpack body."""
    content = {media: {"schema": ref} for media in (_JSON, *MSGPACK_MEDIA_TYPES)}
    answer: _Schema = {"description": description, "content": content}
    if headers:
        answer["headers"] = headers
    return answer


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before sending again.",
                                "schema": {"type": "string"}}}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"schema": {"type": "string"}}}
_UNAUTHORIZED = _json_answer("No bearer token, or not a known one.", _ERROR_REF,
                             _WWW_AUTHENTICATE)
_TOO_LARGE = _json_answer("The body is over the service's `max_body_bytes`.", _ERROR_REF)
_UNSUPPORTED = _json_answer("Content-Type is neither JSON nor msgpack.", _ERROR_REF)


def _health(schema_ref: str) -> _Schema:
    return {
        "summary": "Liveness of the replica that answered.",
        "security": [],
        "responses": {"200": _json_answer("Alive.", {"$ref": schema_ref})},
    }


_OPENAPI_ROUTE = {
    "summary": "This document.",
    "security": [],
    "responses": {"200": {"description": "The OpenAPI document.",
                          "content": {_JSON: {"schema": {"type": "object"}}}}},
}


# --- ingest ---------------------------------------------------------------------------------


def _batch_operation(key: str, item_ref: str, what: str) -> _Schema:
    max_items = _max_items(decode_readings if key == "readings" else decode_outcomes)
    body = {
        "type": "object",
        "required": [key],
        "additionalProperties": False,
        "properties": {key: {"type": "array", "maxItems": max_items,
                             "items": {"$ref": item_ref}}},
    }
    return {
        "summary": f"Store a batch of {what} (insert-only; resent items are duplicates).",
        "description": (
            f"Every item is checked on its own: an item that breaks the {what[:-1]} schema (or "
            "has animals_lower above animals_upper, or a timestamp too far in the future) is "
            "listed under `rejected` and the valid items next to it are stored. Only a body "
            "that cannot be used as a whole is refused (400). Answered after a durable commit."
        ),
        "requestBody": {
            "required": True,
            "content": {media: {"schema": body} for media in (_JSON, *MSGPACK_MEDIA_TYPES)},
        },
        "responses": {
            "200": _both_formats("Stored; counts and the rejected items.",
                                 {"$ref": "#/components/schemas/IngestAnswer"}),
            "400": _json_answer("The body as a whole is malformed.", _ERROR_REF),
            "401": _UNAUTHORIZED,
            "413": _TOO_LARGE,
            "415": _UNSUPPORTED,
            "503": _both_formats("Overloaded or the store is unavailable; nothing was stored.",
                                 _ERROR_REF, _RETRY_AFTER),
        },
    }


def ingest_document() -> dict[str, Any]:
    """The collectors' API: ``POST /readings``, ``POST /outcomes``, ``GET /health``."""
    ingest_answer = {
        "type": "object",
        "required": ["accepted", "duplicates", "rejected"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0},
            "duplicates": {"type": "integer", "minimum": 0},
            "rejected": {"type": "array", "items": {
                "type": "object",
                "required": ["index", "error", "detail"],
                "properties": {"index": {"type": "integer", "minimum": 0},
                               "error": {"type": "string"},
                               "detail": {"type": "string"}},
            }},
        },
    }
    health = {"type": "object", "required": ["status", "actor"],
              "properties": {"status": {"const": "ok"}, "actor": {"type": "string"}}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Reactive ML ingest", "version": "1",
                 "description": "Field gateways send readings and outcomes to the collectors."},
        "security": [{"bearer": []}],
        "paths": {
            "/readings": {"post": _batch_operation("readings", "#/components/schemas/Reading",
                                                   "readings")},
            "/outcomes": {"post": _batch_operation("outcomes", "#/components/schemas/Outcome",
                                                   "outcomes")},
            "/health": {"get": _health("#/components/schemas/Health")},
            "/openapi.json": {"get": _OPENAPI_ROUTE},
        },
        "components": {
            "securitySchemes": _BEARER,
            "schemas": {
                "Reading": _item_schema(
                    fields._READING_CHECKS,
                    "A sensor reading; animals_lower <= animals_upper. Each field by its "
                    "snake_case name or the talk's camelCase one (sensorId, locationId, "
                    "readingId, animalsLowerBound, animalsUpperBound, percentZebras), never "
                    "both. Without reading_id, the reading is identified by its sensor and "
                    "timestamp (its reading id is the timestamp's decimal string).",
                    fields.READING_ALIASES),
                "Outcome": _item_schema(
                    fields._OUTCOME_CHECKS,
                    "A ranger's report: did a hunt at the location succeed (locationId and "
                    "outcomeId also accepted).", fields.OUTCOME_ALIASES),
                "IngestAnswer": ingest_answer,
                "Health": health,
                "Error": _error("Why the request was refused."),
            },
        },
    }


# --- predict --------------------------------------------------------------------------------


#: A request's own deadline (else the predictor's ``[predict] deadline_ms``).
_DEADLINE = {"type": "number", "exclusiveMinimum": 0, "maximum": 60_000,
             "description": "This prediction's deadline in ms (default: [predict] "
                            "deadline_ms); past it, the fallback model answers."}


def predict_document() -> dict[str, Any]:
    """The predictors' API: ``POST /model``, ``GET /health``, ``GET /metrics``."""
    by_location = {
        "type": "object",
        "title": "by location",
        "description": "Predict from the location's latest online features.",
        "required": ["location_id"],
        "additionalProperties": False,
        "properties": {"location_id": dict(_FIELD_SCHEMAS[fields.location_problem]),
                       "deadline_ms": _DEADLINE},
    }
    by_features = {
        "type": "object",
        "title": "by features",
        "description": "Predict from these feature values (named as the model's collection).",
        "required": ["features"],
        "additionalProperties": False,
        "properties": {"features": {
            "type": "object",
            "maxProperties": _MAX_FEATURES,
            "propertyNames": dict(_IDENTIFIER),
            "additionalProperties": {"type": "number"},
        }, "deadline_ms": _DEADLINE},
    }
    prediction = {
        "type": "object",
        "required": ["label", "probability", "model_version", "feature_collection_id",
                     "fallback"],
        "properties": {
            "label": {"type": "boolean"},
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "model_version": {"type": "integer"},
            "feature_collection_id": {"type": "integer"},
            "fallback": {"type": "boolean",
                         "description": "Answered by the fallback model, not the champion."},
        },
    }
    health = {"type": "object", "required": ["status", "actor", "model_version"],
              "properties": {"status": {"const": "ok"}, "actor": {"type": "string"},
                             "model_version": {"type": ["integer", "null"]},
                             "shadow_version": {"type": ["integer", "null"],
                                                "description": "A model serving in shadow."},
                             "rows_confirmed_age_s": {
                                 "type": ["number", "null"],
                                 "description": "Seconds since this replica's in-memory "
                                                "feature rows were last known complete "
                                                "(null: never)."}}}
    query = {"oneOf": [{"$ref": "#/components/schemas/LocationQuery"},
                       {"$ref": "#/components/schemas/FeaturesQuery"}]}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Reactive ML predict", "version": "1",
                 "description": "Services ask the predictors for a prediction."},
        "security": [{"bearer": []}],
        "paths": {
            "/model": {"post": {
                "summary": "Predict the outcome of the next hunt.",
                "requestBody": {"required": True, "content": {
                    media: {"schema": query} for media in (_JSON, *MSGPACK_MEDIA_TYPES)}},
                "responses": {
                    "200": _both_formats("The champion's answer (or the fallback's, marked).",
                                         {"$ref": "#/components/schemas/Prediction"}),
                    "400": _json_answer("Bad input, or no features for that location.",
                                        _ERROR_REF),
                    "401": _UNAUTHORIZED,
                    "413": _TOO_LARGE,
                    "415": _UNSUPPORTED,
                    "503": _json_answer("No model yet, or none could answer; try again later.",
                                        _ERROR_REF),
                },
            }},
            "/health": {"get": _health("#/components/schemas/Health")},
            "/metrics": {"get": {
                "summary": "Counters in the Prometheus text format.",
                "responses": {
                    "200": {"description": "Prometheus text exposition format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "401": _UNAUTHORIZED,
                },
            }},
            "/openapi.json": {"get": _OPENAPI_ROUTE},
        },
        "components": {
            "securitySchemes": _BEARER,
            "schemas": {
                "LocationQuery": by_location,
                "FeaturesQuery": by_features,
                "Prediction": prediction,
                "Health": health,
                "Error": _error("Why no prediction was made."),
            },
        },
    }


def _serialized(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


INGEST_OPENAPI_JSON = _serialized(ingest_document())
PREDICT_OPENAPI_JSON = _serialized(predict_document())
