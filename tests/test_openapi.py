"""The OpenAPI documents: valid OpenAPI 3.1, and in step with the codec they describe.

The cross-checks run hypothesis items through both the document's JSON Schema and the codec:
wherever the two could disagree (a field, a type, a bound) they must not, except for the two
rules JSON Schema cannot state (animals_lower <= animals_upper, the future-timestamp bound).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok

from messages import _wire_fields
from messages.codec import (
    BodyError,
    decode_outcomes,
    decode_predict_query,
    decode_readings,
)
from messages.facts import Outcome, Reading
from messages.openapi import (
    INGEST_OPENAPI_JSON,
    PREDICT_OPENAPI_JSON,
    ingest_document,
    predict_document,
)

NOW_MS = 1_750_000_000_000
# What JSON Schema cannot say: checked by the codec only, so an item may fit the schema yet
# be rejected for these (never the other way round).
CROSS_FIELD_ERRORS = {"bounds_inverted", "future_timestamp"}


def _integral_float(value: Any) -> bool:
    """Whether ``value`` holds a float like 1.0: an integer to JSON Schema, not to the codec."""
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_integral_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_integral_float(v) for v in value)
    return False


def _validator(document: dict[str, Any], name: str) -> Any:
    """A validator for ``components.schemas[name]``, its ``$ref``s resolved in ``document``."""
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def test_documents_are_valid_openapi() -> None:
    for document in (ingest_document(), predict_document()):
        schema = schemathesis.openapi.from_dict(document)
        schema.validate()
        results = list(schema.get_all_operations())
        assert all(isinstance(result, Ok) for result in results), results
        assert len(results) == sum(len(methods) for methods in document["paths"].values())


def test_served_bytes_are_the_documents() -> None:
    assert json.loads(INGEST_OPENAPI_JSON) == ingest_document()
    assert json.loads(PREDICT_OPENAPI_JSON) == predict_document()


def test_schema_required_fields_match_the_codec_and_the_facts() -> None:
    schemas = ingest_document()["components"]["schemas"]
    for name, fact, codec_fields in (
        ("Reading", Reading, _wire_fields._READING_FIELDS),
        ("Outcome", Outcome, _wire_fields._OUTCOME_FIELDS),
    ):
        schema = schemas[name]
        aliases = (_wire_fields.READING_ALIASES if name == "Reading"
                   else _wire_fields.OUTCOME_ALIASES)
        assert set(schema["properties"]) == set(codec_fields) | set(aliases)
        assert tuple(f.name for f in dataclasses.fields(fact)) == codec_fields
        assert schema["additionalProperties"] is False
        # Every field is required by one of its names, but the optional reading id, and no
        # field may be given by both.
        required = set()
        for rule in schema["allOf"]:
            if "required" in rule:
                required.add(rule["required"][0])
            elif "anyOf" in rule:
                required.add(rule["anyOf"][0]["required"][0])
            else:
                both = rule["not"]["required"]
                assert aliases[both[1]] == both[0]
        assert required == set(codec_fields) - _wire_fields._OPTIONAL


def test_every_route_but_health_and_the_document_needs_the_bearer_token() -> None:
    for document in (ingest_document(), predict_document()):
        assert document["security"] == [{"bearer": []}]
        assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        for path, operations in document["paths"].items():
            for operation in operations.values():
                public = operation.get("security") == []
                assert public == (path in {"/health", "/openapi.json"}), path
                if not public:
                    assert "401" in operation["responses"], path


def test_batch_limits_are_the_codecs() -> None:
    paths = ingest_document()["paths"]
    for path in ("/readings", "/outcomes"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "application/msgpack",
                                "application/x-msgpack", "application/vnd.msgpack"}
        key = path[1:]
        body = content["application/json"]["schema"]
        limit = body["properties"][key]["maxItems"]
        item = _wire_item(key)
        over = json.dumps({key: [item] * (limit + 1)}).encode()
        decode = decode_readings if key == "readings" else decode_outcomes
        with pytest.raises(BodyError, match="too_many_items"):
            decode(over, "application/json", now_ms=NOW_MS)
        at_limit = decode(json.dumps({key: [item] * 3}).encode(), None, now_ms=NOW_MS)
        assert len(at_limit.items) == 3


def _wire_item(key: str) -> dict[str, Any]:
    if key == "readings":
        return {"sensor_id": "s", "location_id": 1, "reading_id": "r", "timestamp": NOW_MS,
                "animals_lower": 1, "animals_upper": 2, "percent_zebras": 0.5}
    return {"location_id": 1, "outcome_id": "o", "timestamp": NOW_MS, "label": True}


# --- the schema and the codec agree, item by item ------------------------------------------

_EDGE_INTS = st.sampled_from([-1, 0, 1, 2**31 - 1, 2**31, 10**9, 10**9 + 1, 2**63, -(2**63)])
_VALUES = st.one_of(
    st.none(), st.booleans(), _EDGE_INTS, st.integers(-10, 2**33),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, 0.5, 1.0, 1.5]),
    st.text(max_size=3), st.sampled_from(["x" * 128, "x" * 129, ""]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                         max_size=1),
)


def _items(key: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid items with some fields swapped for edge values, dropped, or an extra one added."""
    base = _wire_item(key)
    return st.builds(
        lambda changes, drop, extra: {
            **{k: v for k, v in {**base, **changes}.items() if k != drop}, **extra
        },
        st.dictionaries(st.sampled_from(sorted(base)), _VALUES, max_size=3),
        st.sampled_from([None, *sorted(base)]),
        st.sampled_from([{}, {}, {}, {"extra": 1}]),
    )


@pytest.mark.parametrize(("key", "component"), [("readings", "Reading"),
                                                ("outcomes", "Outcome")])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_an_item_fits_the_schema_exactly_when_the_codec_accepts_it(
    key: str, component: str, data: st.DataObject
) -> None:
    item = data.draw(_items(key))
    fits = _validator(ingest_document(), component).is_valid(item)
    decode = decode_readings if key == "readings" else decode_outcomes
    batch = decode(json.dumps({key: [item]}).encode(), "application/json", now_ms=NOW_MS)
    if batch.items:
        assert fits, item
    else:
        (rejected,) = batch.rejected
        if fits != (rejected.error in CROSS_FIELD_ERRORS):
            # The one gap: JSON Schema takes 1.0 as an integer, the codec does not.
            assert fits and rejected.error == "wrong_type" and _integral_float(item), (
                item, rejected)


_FEATURE_VALUES = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False,
                                                                    allow_infinity=False),
                            st.booleans(), st.none(), st.text(max_size=2))
_QUERIES = st.one_of(
    st.fixed_dictionaries({"location_id": st.one_of(_EDGE_INTS, _VALUES)}),
    st.fixed_dictionaries({"features": st.dictionaries(
        st.sampled_from(["a", "b", "", "x" * 129]), _FEATURE_VALUES, max_size=3)}),
    st.fixed_dictionaries({"features": _VALUES}),
    st.dictionaries(st.sampled_from(["location_id", "features", "other"]), st.integers(0, 3)),
)


@settings(max_examples=300, deadline=None)
@given(query=_QUERIES)
def test_a_predict_query_fits_the_schema_exactly_when_the_codec_accepts_it(
    query: dict[str, Any],
) -> None:
    document = predict_document()
    request = document["paths"]["/model"]["post"]["requestBody"]["content"]["application/json"]
    fits = jsonschema_rs.validator_for(
        {**request["schema"], "components": document["components"]}
    ).is_valid(query)
    try:
        decode_predict_query(json.dumps(query).encode(), "application/json")
    except BodyError:
        accepted = False
    else:
        accepted = True
    assert fits == accepted or (fits and _integral_float(query)), query


def test_too_many_features_is_refused_by_both() -> None:
    document = predict_document()
    features_schema = document["components"]["schemas"]["FeaturesQuery"]
    limit = features_schema["properties"]["features"]["maxProperties"]
    query = {"features": {f"f{i}": 1.0 for i in range(limit + 1)}}
    assert not _validator(document, "FeaturesQuery").is_valid(query)
    with pytest.raises(BodyError, match="too_many_items"):
        decode_predict_query(json.dumps(query).encode(), None)
    query["features"].popitem()
    assert _validator(document, "FeaturesQuery").is_valid(query)
    assert decode_predict_query(json.dumps(query).encode(), None).features is not None


def test_the_prediction_schema_takes_a_real_answer() -> None:
    answer = {"label": True, "probability": 0.25, "model_version": 3,
              "feature_collection_id": 1, "fallback": False}
    validator = _validator(predict_document(), "Prediction")
    assert validator.is_valid(answer)
    assert not validator.is_valid({**answer, "probability": math.pi})
