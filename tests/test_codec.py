"""The external wire codec: strict decoding of batches and queries, and encoding answers."""

from __future__ import annotations

import dataclasses
import json
import math
from types import MappingProxyType
from typing import Any

import msgpack
import pytest

from messages.codec import (
    BodyError,
    DecodedBatch,
    PredictQuery,
    UnsupportedMediaType,
    WireFormat,
    decode_outcomes,
    decode_predict_query,
    decode_readings,
    encode,
    encode_outcomes,
    encode_readings,
    ingest_answer,
    outcome_to_wire,
    reading_to_wire,
    wire_format,
)
from messages.facts import ItemError, Outcome, Reading

NOW_MS = 1_700_000_000_000
FORMATS: tuple[WireFormat, ...] = ("json", "msgpack")
CONTENT_TYPE = {"json": "application/json", "msgpack": "application/msgpack"}


def reading_item(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "sensor_id": "sensor-1",
        "location_id": 7,
        "reading_id": "r-1",
        "timestamp": NOW_MS - 1_000,
        "animals_lower": 3,
        "animals_upper": 9,
        "percent_zebras": 0.25,
    }
    item.update(changes)
    return item


def outcome_item(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "location_id": 7,
        "outcome_id": "o-1",
        "timestamp": NOW_MS - 1_000,
        "label": True,
    }
    item.update(changes)
    return item


def pack(payload: Any, fmt: WireFormat) -> bytes:
    if fmt == "json":
        return json.dumps(payload).encode()
    return msgpack.packb(payload, use_bin_type=True)


def readings(items: list[Any], fmt: WireFormat = "json", **kwargs: Any) -> DecodedBatch[Reading]:
    kwargs.setdefault("now_ms", NOW_MS)
    return decode_readings(pack({"readings": items}, fmt), CONTENT_TYPE[fmt], **kwargs)


def only_rejection(items: list[Any], fmt: WireFormat = "json") -> ItemError:
    batch = readings(items, fmt)
    assert len(batch.rejected) == 1
    return batch.rejected[0]


def body_error(body: bytes, content_type: str | None = "application/json") -> BodyError:
    with pytest.raises(BodyError) as caught:
        decode_readings(body, content_type, now_ms=NOW_MS)
    return caught.value


# --- content types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, "json"),
        ("", "json"),
        ("application/json", "json"),
        ("application/json; charset=utf-8", "json"),
        ("Application/JSON;charset=UTF-8", "json"),
        ("application/msgpack", "msgpack"),
        ("application/x-msgpack", "msgpack"),
        ("application/vnd.msgpack", "msgpack"),
        (" APPLICATION/MSGPACK ; q=1", "msgpack"),
    ],
)
def test_content_type_names_the_wire_format(content_type: str | None, expected: str) -> None:
    assert wire_format(content_type) == expected


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/jsonx", "json", "; x=1"]
)
def test_unknown_content_type_is_unsupported_media_type_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        decode_readings(b'{"readings": []}', content_type, now_ms=NOW_MS)
    assert caught.value.status == 415
    assert caught.value.code == "unsupported_media_type"
    assert isinstance(caught.value, BodyError)


def test_body_error_is_a_400_value_error_with_code_and_detail() -> None:
    error = body_error(b"{")
    assert isinstance(error, ValueError)
    assert error.status == 400
    assert error.code == "malformed_json"
    assert error.detail
    assert str(error).startswith("malformed_json: ")


# --- whole-body errors ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"{", b'{"readings": []} x', b"{'readings': []}", b"nul"])
def test_unparseable_json_is_malformed_json(body: bytes) -> None:
    assert body_error(body).code == "malformed_json"


def test_integer_beyond_pythons_digit_limit_is_a_body_error_not_a_crash() -> None:
    body = b'{"readings": [' + b"1" * 5000 + b"]}"
    assert body_error(body).code == "malformed_json"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (msgpack.packb({"readings": []})[:-1], "map without its value"),
        (msgpack.packb({"readings": [1, 2]})[:-1], "truncated"),
        (msgpack.packb({"readings": []}) + b"\x00", "trailing bytes"),
        (msgpack.packb({"readings": [msgpack.ExtType(5, b"xy")]}), "ext type"),
        (msgpack.packb({"readings": [msgpack.Timestamp(1, 0)]}), "timestamp ext"),
        (msgpack.packb({b"readings": []}, use_bin_type=True), "binary map key"),
        (msgpack.packb({"readings": [{1: 2}]}), "integer map key"),
        (b"\xc1", "reserved type byte"),
    ],
)
def test_unparseable_msgpack_is_malformed_msgpack(body: bytes, why: str) -> None:
    assert body_error(body, "application/msgpack").code == "malformed_msgpack", why


def test_empty_msgpack_body_is_malformed_msgpack() -> None:
    assert body_error(b"", "application/msgpack").code == "malformed_msgpack"


def test_invalid_utf8_is_invalid_utf8_in_both_formats() -> None:
    assert body_error(b'{"readings": ["\xff"]}').code == "invalid_utf8"
    bad_str = b"\x81\xa8readings\x91\xa1\xff"  # {"readings": ["\xff"]} with a raw str byte
    assert body_error(bad_str, "application/msgpack").code == "invalid_utf8"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"readings": [' + b'{"a": ' * 50 + b"1" + b"}" * 50 + b"]}",
        b"[" + b"[[],[" * 3_000 + b"]" * 3_001,  # a shape the cheap pre-limit misses
    ],
)
def test_deeply_nested_json_is_too_deep(body: bytes) -> None:
    assert body_error(body).code == "too_deep"


def test_deeply_nested_msgpack_is_too_deep() -> None:
    assert body_error(b"\x91" * 5_000 + b"\x90", "application/msgpack").code == "too_deep"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    sensor_id = "[{" * 60 + '\\"[['
    batch = readings([reading_item(sensor_id=sensor_id)])
    assert batch.items[0].sensor_id == sensor_id


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ([], "not_an_object"),
        (3, "not_an_object"),
        (None, "not_an_object"),
        ({}, "missing_field"),
        ({"readings": [], "extra": 1}, "unknown_field"),
        ({"outcomes": []}, "unknown_field"),
        ({"readings": {}}, "wrong_type"),
        ({"readings": None}, "wrong_type"),
    ],
)
def test_body_shape_errors_are_named(payload: Any, code: str, fmt: WireFormat) -> None:
    assert body_error(pack(payload, fmt), CONTENT_TYPE[fmt]).code == code


def test_top_level_key_given_twice_is_duplicate_field() -> None:
    assert body_error(b'{"readings": [], "readings": []}').code == "duplicate_field"


@pytest.mark.parametrize("fmt", FORMATS)
def test_more_items_than_the_limit_is_too_many_items(fmt: WireFormat) -> None:
    with pytest.raises(BodyError) as caught:
        readings([reading_item()] * 4, fmt, max_items=3)
    assert caught.value.code == "too_many_items"
    assert len(readings([reading_item()] * 3, fmt, max_items=3).items) == 3


# --- per-item errors --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_item_is_rejected_with_its_index_and_valid_neighbours_are_kept(fmt: WireFormat) -> None:
    items = [
        reading_item(reading_id="a"),
        reading_item(animals_lower=10, animals_upper=2),
        reading_item(reading_id="c"),
    ]
    batch = readings(items, fmt)
    assert [r.reading_id for r in batch.items] == ["a", "c"]
    assert batch.indices == (0, 2)
    assert batch.rejected == (
        ItemError(1, "bounds_inverted", "animals_lower 10 is above animals_upper 2"),
    )


def test_valid_reading_decodes_to_a_reading_fact() -> None:
    assert readings([reading_item()]).items == (
        Reading("sensor-1", 7, "r-1", NOW_MS - 1_000, 3, 9, 0.25),
    )


def test_rejections_are_sorted_by_index_and_each_item_gets_one_error() -> None:
    items = [reading_item(location_id=-1, timestamp="x"), 5, reading_item(), reading_item(x=1)]
    batch = readings(items)
    assert [(e.index, e.error) for e in batch.rejected] == [
        (0, "out_of_range"),
        (1, "not_an_object"),
        (3, "unknown_field"),
    ]


@pytest.mark.parametrize("item", [[1, 2], 5, None, "reading", True])
def test_item_that_is_not_a_map_is_not_an_object(item: Any) -> None:
    assert only_rejection([item]).error == "not_an_object"


def test_unknown_field_is_named_and_wins_over_missing_field() -> None:
    item = reading_item(colour="striped")
    del item["sensor_id"]
    rejection = only_rejection([item])
    assert rejection.error == "unknown_field"
    assert "colour" in rejection.detail


@pytest.mark.parametrize("field", [f for f in reading_item() if f != "reading_id"])
def test_each_missing_reading_field_is_named(field: str) -> None:
    item = reading_item()
    del item[field]
    rejection = only_rejection([item])
    assert (rejection.error, rejection.detail) == ("missing_field", f"{field}: required")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sensor_id", 1.5),
        ("sensor_id", True),
        ("sensor_id", None),
        ("reading_id", ["r"]),
        ("location_id", True),
        ("location_id", 7.0),
        ("location_id", "7"),
        ("timestamp", 1.5),
        ("timestamp", False),
        ("animals_lower", "3"),
        ("animals_upper", {"n": 9}),
        ("animals_upper", True),
        ("percent_zebras", True),
        ("percent_zebras", "0.5"),
        ("percent_zebras", None),
    ],
)
def test_value_of_the_wrong_type_is_wrong_type(field: str, value: Any, fmt: WireFormat) -> None:
    rejection = only_rejection([reading_item(**{field: value})], fmt)
    assert rejection.error == "wrong_type"
    assert rejection.detail.startswith(f"{field}: ")


def test_binary_where_a_string_belongs_is_wrong_type() -> None:
    rejection = only_rejection([reading_item(sensor_id=b"s-1")], "msgpack")
    assert rejection.error == "wrong_type"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_json_nan_and_infinity_are_not_finite_for_that_item_only(literal: bytes) -> None:
    good = json.dumps(reading_item()).encode()
    bad = good.replace(b"0.25", literal)
    body = b'{"readings": [' + good + b"," + bad + b"]}"
    batch = decode_readings(body, "application/json", now_ms=NOW_MS)
    assert len(batch.items) == 1
    assert batch.rejected[0].index == 1
    assert batch.rejected[0].error == "not_finite"
    assert batch.rejected[0].detail.startswith("percent_zebras: ")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_msgpack_nan_and_infinity_are_not_finite(value: float) -> None:
    assert only_rejection([reading_item(percent_zebras=value)], "msgpack").error == "not_finite"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sensor_id", ""),
        ("sensor_id", "s" * 129),
        ("reading_id", ""),
        ("location_id", -1),
        ("location_id", 2**31),
        ("timestamp", -1),
        ("animals_lower", -1),
        ("animals_upper", 10**9 + 1),
        ("percent_zebras", -0.01),
        ("percent_zebras", 1.0000001),
        ("percent_zebras", 2),
    ],
)
def test_value_outside_its_range_is_out_of_range(field: str, value: Any, fmt: WireFormat) -> None:
    rejection = only_rejection([reading_item(**{field: value})], fmt)
    assert rejection.error == "out_of_range"
    assert rejection.detail.startswith(f"{field}: ")


def test_huge_json_integer_is_out_of_range_not_a_crash() -> None:
    assert only_rejection([reading_item(location_id=10**300)]).error == "out_of_range"


@pytest.mark.parametrize("fmt", FORMATS)
def test_values_on_the_edges_of_their_ranges_are_accepted(fmt: WireFormat) -> None:
    edges = reading_item(
        sensor_id="s" * 128,
        reading_id="r",
        location_id=2**31 - 1,
        timestamp=NOW_MS + 300_000,
        animals_lower=10**9,
        animals_upper=10**9,
        percent_zebras=1,
    )
    zeros = reading_item(location_id=0, timestamp=0, animals_lower=0, animals_upper=0)
    batch = readings([edges, reading_item(percent_zebras=0), zeros], fmt)
    assert batch.rejected == ()
    assert batch.items[0].percent_zebras == 1.0
    assert type(batch.items[0].percent_zebras) is float
    assert type(batch.items[1].percent_zebras) is float


def test_non_ascii_ids_are_accepted() -> None:
    batch = readings([reading_item(sensor_id="zébra-ß-🦓", reading_id="ø" * 128)])
    assert batch.items[0].sensor_id == "zébra-ß-🦓"


def test_lone_surrogate_escape_in_json_id_is_rejected_per_item() -> None:
    good = json.dumps(reading_item()).encode()
    bad = good.replace(b'"sensor-1"', b'"s\\ud800"')
    body = b'{"readings": [' + bad + b"," + good + b"]}"
    batch = decode_readings(body, None, now_ms=NOW_MS)
    assert batch.indices == (1,)
    assert (batch.rejected[0].index, batch.rejected[0].error) == (0, "invalid_utf8")


@pytest.mark.parametrize("fmt", FORMATS)
def test_lower_bound_above_upper_bound_is_bounds_inverted(fmt: WireFormat) -> None:
    assert only_rejection([reading_item(animals_lower=5, animals_upper=4)], fmt).error == (
        "bounds_inverted"
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_timestamp_past_the_allowed_future_is_future_timestamp(fmt: WireFormat) -> None:
    item = reading_item(timestamp=NOW_MS + 300_001)
    assert only_rejection([item], fmt).error == "future_timestamp"
    batch = readings([item], fmt, max_future_ms=1_000_000)
    assert batch.rejected == ()


def test_json_item_with_a_key_given_twice_is_duplicate_field() -> None:
    good = json.dumps(reading_item()).encode()
    bad = good[:-1] + b', "location_id": 8}'
    body = b'{"readings": [' + bad + b"," + good + b"]}"
    batch = decode_readings(body, None, now_ms=NOW_MS)
    assert batch.indices == (1,)
    assert batch.rejected[0].error == "duplicate_field"
    assert "location_id" in batch.rejected[0].detail


def test_msgpack_map_with_a_key_given_twice_is_duplicate_field() -> None:
    packer = msgpack.Packer()
    item = reading_item()
    duplicated = packer.pack_map_header(len(item) + 1) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in [*item.items(), ("timestamp", 1)]
    )
    body = b"\x81" + packer.pack("readings") + b"\x91" + duplicated
    rejection = decode_readings(body, "application/msgpack", now_ms=NOW_MS).rejected[0]
    assert rejection.error == "duplicate_field"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"sensor_id": 1.5, "location_id": -5}, "wrong_type"),  # first in declaration order
        ({"location_id": -5, "sensor_id": ""}, "out_of_range"),
        ({"animals_lower": 9, "animals_upper": 1, "timestamp": NOW_MS * 2}, "bounds_inverted"),
        ({"percent_zebras": math.inf, "timestamp": NOW_MS * 2}, "not_finite"),
    ],
)
def test_checks_run_in_declaration_order_and_report_the_first_problem(
    changes: dict[str, Any], code: str
) -> None:
    rejection = only_rejection([reading_item(**changes)], "msgpack")
    assert rejection.error == code


def test_the_first_failing_field_is_the_one_named() -> None:
    rejection = only_rejection([reading_item(reading_id=[3], sensor_id=[4])])
    assert rejection.detail.startswith("sensor_id: ")


# --- outcomes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_outcomes_decode_and_reject_bad_items_by_index(fmt: WireFormat) -> None:
    items = [
        outcome_item(),
        outcome_item(label=1),
        outcome_item(outcome_id="o-2", label=False),
        outcome_item(timestamp=NOW_MS + 10**9),
        outcome_item(extra=True),
    ]
    body = pack({"outcomes": items}, fmt)
    batch = decode_outcomes(body, CONTENT_TYPE[fmt], now_ms=NOW_MS)
    assert batch.items == (
        Outcome(7, "o-1", NOW_MS - 1_000, True),
        Outcome(7, "o-2", NOW_MS - 1_000, False),
    )
    assert batch.indices == (0, 2)
    assert [(e.index, e.error) for e in batch.rejected] == [
        (1, "wrong_type"),
        (3, "future_timestamp"),
        (4, "unknown_field"),
    ]
    assert batch.rejected[0].detail.startswith("label: ")


def test_readings_body_sent_to_outcomes_is_unknown_field() -> None:
    with pytest.raises(BodyError) as caught:
        decode_outcomes(b'{"readings": []}', None, now_ms=NOW_MS)
    assert caught.value.code == "unknown_field"


# --- both formats, round trips, size ----------------------------------------------------------


def test_both_formats_give_identical_results_for_the_same_data() -> None:
    items = [
        reading_item(),
        reading_item(percent_zebras=math.nan),
        "nope",
        reading_item(sensor_id=""),
        reading_item(animals_lower=2, animals_upper=1),
        reading_item(timestamp=NOW_MS + 400_000),
        reading_item(location_id=False),
        {"sensor_id": "only"},
        reading_item(reading_id="r-2", percent_zebras=1),
    ]
    from_json = readings(items, "json")
    from_msgpack = readings(items, "msgpack")
    assert from_json == from_msgpack
    assert from_json.indices == (0, 8)
    assert len(from_json.rejected) == 7


@pytest.mark.parametrize("fmt", FORMATS)
def test_encoded_readings_decode_back_to_the_same_readings(fmt: WireFormat) -> None:
    facts = [
        Reading(f"s-{i}", i % 5, f"r-{i}", NOW_MS - i, i, i + 3, (i % 10) / 10) for i in range(50)
    ]
    batch = decode_readings(encode_readings(facts, fmt), CONTENT_TYPE[fmt], now_ms=NOW_MS)
    assert list(batch.items) == facts
    assert batch.indices == tuple(range(50))
    assert batch.rejected == ()


@pytest.mark.parametrize("fmt", FORMATS)
def test_encoded_outcomes_decode_back_to_the_same_outcomes(fmt: WireFormat) -> None:
    facts = [Outcome(i, f"o-{i}", NOW_MS - i, i % 2 == 0) for i in range(20)]
    batch = decode_outcomes(encode_outcomes(facts, fmt), CONTENT_TYPE[fmt], now_ms=NOW_MS)
    assert list(batch.items) == facts


def test_a_json_batch_of_10000_readings_decodes() -> None:
    facts = [
        Reading(f"sensor-{i % 300:05d}", i % 64, f"reading-{i:010d}", NOW_MS - i, 10, 20, 0.3)
        for i in range(10_000)
    ]
    body = encode_readings(facts, "json")
    assert len(body) > 1_500_000
    batch = decode_readings(body, "application/json", now_ms=NOW_MS)
    assert len(batch.items) == 10_000
    assert batch.rejected == ()


def test_wire_dicts_carry_exactly_the_fact_fields() -> None:
    reading = Reading("s", 1, "r", 2, 3, 4, 0.5)
    outcome = Outcome(1, "o", 2, False)
    assert reading_to_wire(reading) == {
        f.name: getattr(reading, f.name) for f in dataclasses.fields(reading)
    }
    assert outcome_to_wire(outcome) == {
        "location_id": 1,
        "outcome_id": "o",
        "timestamp": 2,
        "label": False,
    }


def test_decoded_batch_is_immutable() -> None:
    batch = readings([reading_item()])
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.items = ()  # type: ignore[misc]


# --- predict queries --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_query_by_location(fmt: WireFormat) -> None:
    query = decode_predict_query(pack({"location_id": 12}, fmt), CONTENT_TYPE[fmt])
    assert query == PredictQuery(location_id=12, features=None)


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_query_features_are_floats_sorted_by_name(fmt: WireFormat) -> None:
    body = pack({"features": {"zebra_share": 0.5, "animals": 12, "hour": 3.0}}, fmt)
    query = decode_predict_query(body, CONTENT_TYPE[fmt])
    assert query.location_id is None
    assert query.features == (("animals", 12.0), ("hour", 3.0), ("zebra_share", 0.5))
    assert all(type(value) is float for _, value in query.features)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({}, "missing_field"),
        ([], "not_an_object"),
        ({"location_id": 1, "features": {}}, "conflicting_fields"),
        ({"location": 1}, "unknown_field"),
        ({"location_id": 1, "extra": 2}, "unknown_field"),
        ({"location_id": True}, "wrong_type"),
        ({"location_id": "1"}, "wrong_type"),
        ({"location_id": None}, "wrong_type"),
        ({"location_id": -1}, "out_of_range"),
        ({"features": [1.0]}, "wrong_type"),
        ({"features": {"a": "1"}}, "wrong_type"),
        ({"features": {"a": True}}, "wrong_type"),
        ({"features": {"a": math.nan}}, "not_finite"),
        ({"features": {"a": math.inf}}, "not_finite"),
        ({"features": {"": 1.0}}, "out_of_range"),
        ({"features": {f"f{i}": 1.0 for i in range(257)}}, "too_many_items"),
    ],
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_predict_query_is_a_named_body_error(payload: Any, code: str, fmt: WireFormat) -> None:
    with pytest.raises(BodyError) as caught:
        decode_predict_query(pack(payload, fmt), CONTENT_TYPE[fmt])
    assert caught.value.code == code


def test_predict_query_with_256_features_is_accepted() -> None:
    features = {f"f{i:03d}": float(i) for i in range(256)}
    query = decode_predict_query(pack({"features": features}, "json"), None)
    assert query.features is not None and len(query.features) == 256


def test_predict_query_feature_named_twice_is_duplicate_field() -> None:
    with pytest.raises(BodyError) as caught:
        decode_predict_query(b'{"features": {"a": 1, "a": 2}}', "application/json")
    assert caught.value.code == "duplicate_field"


def test_predict_query_body_errors_are_the_same_as_for_batches() -> None:
    with pytest.raises(BodyError) as caught:
        decode_predict_query(b'{"location_id": 1', None)
    assert caught.value.code == "malformed_json"
    with pytest.raises(UnsupportedMediaType):
        decode_predict_query(b"{}", "text/html")


# --- encoding answers -------------------------------------------------------------------------


def test_json_encoding_is_compact_utf8() -> None:
    assert encode({"a": [1, 2], "b": "zébra"}, "json") == '{"a":[1,2],"b":"zébra"}'.encode()


def test_msgpack_encoding_uses_bin_type_and_round_trips() -> None:
    payload = {"label": True, "probability": 0.75, "raw": b"\x00\x01", "ids": ("a", "b")}
    packed = encode(payload, "msgpack")
    assert msgpack.unpackb(packed, raw=False) == {**payload, "ids": ["a", "b"]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_only_mappings_encode_like_dicts(fmt: WireFormat) -> None:
    payload = MappingProxyType({"inner": MappingProxyType({"x": 1})})
    assert encode(payload, fmt) == encode({"inner": {"x": 1}}, fmt)


def test_json_encoding_refuses_nan_rather_than_emitting_invalid_json() -> None:
    with pytest.raises(ValueError):
        encode({"probability": math.nan}, "json")


def test_encoding_to_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        encode({}, "xml")  # type: ignore[arg-type]


def test_ingest_answer_lists_each_rejection_with_index_error_and_detail() -> None:
    answer = ingest_answer(5, 2, [ItemError(3, "out_of_range", "location_id: -1")])
    assert answer == {
        "accepted": 5,
        "duplicates": 2,
        "rejected": [{"index": 3, "error": "out_of_range", "detail": "location_id: -1"}],
    }
    assert json.loads(encode(answer, "json")) == answer


def test_a_feature_value_past_what_a_float_holds_is_named_not_a_crash() -> None:
    body = b'{"features": {"a": 1' + b"0" * 400 + b"}}"
    with pytest.raises(BodyError) as caught:
        decode_predict_query(body, "application/json")
    assert caught.value.code == "out_of_range" and "features['a']" in caught.value.detail
