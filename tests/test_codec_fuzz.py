"""Whatever the bytes, decoding raises nothing but BodyError, and a decoded batch accounts
for every item of the body exactly once."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgpack
from hypothesis import example, given, settings
from hypothesis import strategies as st

from messages._wire_fields import OUTCOME_ALIASES, READING_ALIASES
from messages.codec import (
    BodyError,
    DecodedBatch,
    WireFormat,
    decode_outcomes,
    decode_predict_query,
    decode_readings,
    encode_readings,
    reading_to_wire,
)
from messages.facts import Reading

NOW_MS = 1_700_000_000_000
CONTENT_TYPE = {"json": "application/json", "msgpack": "application/msgpack"}
FUZZ = settings(max_examples=200, deadline=None)

formats = st.sampled_from(["json", "msgpack"])
huge_ints = st.sampled_from([2**63, 2**64, -(2**64), 10**100, -(10**300)])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_ints
    | st.floats()  # NaN and both infinities included
    | st.text(max_size=20)
)
field_names = st.sampled_from(
    ["sensor_id", "location_id", "reading_id", "timestamp", "animals_lower", "animals_upper"]
    + ["percent_zebras", "outcome_id", "label", "features", "readings"]
    + list(READING_ALIASES) + list(OUTCOME_ALIASES)  # the talk's camelCase names
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(field_names | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
good_fields: dict[str, st.SearchStrategy[Any]] = {
    "sensor_id": st.text(min_size=1, max_size=130) | st.integers(-(2**64), 2**64),
    "location_id": st.integers(-1, 2**31),
    "reading_id": st.text(min_size=1, max_size=10) | st.integers(),
    "timestamp": st.integers(-1, NOW_MS + 400_000),
    "animals_lower": st.integers(-1, 10**9 + 1) | st.floats(-1.0, 1e9 + 1),
    "animals_upper": st.integers(-1, 10**9 + 1) | st.floats(-1.0, 1e9 + 1),
    "percent_zebras": st.floats(-0.1, 1.1) | st.integers(-1, 2),
}
_CAMEL = {ours: theirs for theirs, ours in READING_ALIASES.items()}


@st.composite
def reading_like(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly-plausible readings: each field usually sane, sometimes absent or anything at
    all; by its snake_case name, the talk's camelCase one, or now and then both."""
    item: dict[str, Any] = {}
    for name, good in good_fields.items():
        choice = draw(st.integers(0, 9))
        if choice == 0:
            continue
        spelling = draw(st.integers(0, 9))
        keys = [name] if spelling < 5 or name not in _CAMEL else (
            [_CAMEL[name]] if spelling < 9 else [name, _CAMEL[name]])
        for key in keys:
            item[key] = draw(json_values) if choice == 1 else draw(good)
    if draw(st.integers(0, 9)) == 0:
        item[draw(st.text(max_size=8))] = draw(json_values)
    return item


batch_items = st.lists(reading_like() | json_values, max_size=8)


def assert_accounts_for_every_item(batch: DecodedBatch[Any], count: int) -> None:
    assert len(batch.items) + len(batch.rejected) == count
    assert len(batch.indices) == len(batch.items)
    rejected_at = [error.index for error in batch.rejected]
    assert rejected_at == sorted(rejected_at)
    assert sorted([*batch.indices, *rejected_at]) == list(range(count))


def decode_or_body_error(body: bytes, content_type: str) -> DecodedBatch[Reading] | BodyError:
    try:
        return decode_readings(body, content_type, now_ms=NOW_MS)
    except BodyError as error:
        return error


@FUZZ
@given(body=st.binary(max_size=300), content_type=st.sampled_from(list(CONTENT_TYPE.values())))
def test_random_bytes_raise_nothing_but_body_error(body: bytes, content_type: str) -> None:
    for decode in (decode_readings, decode_outcomes):
        with contextlib.suppress(BodyError):
            decode(body, content_type, now_ms=NOW_MS)
    with contextlib.suppress(BodyError):
        decode_predict_query(body, content_type)


@FUZZ
@given(items=batch_items)
def test_random_json_structures_are_each_accepted_or_rejected_once(items: list[Any]) -> None:
    body = json.dumps({"readings": items}).encode()
    result = decode_or_body_error(body, "application/json")
    if isinstance(result, BodyError):
        # Only an integer past Python's digit limit can spoil a well-formed body.
        assert result.code == "malformed_json"
    else:
        assert_accounts_for_every_item(result, len(items))


@FUZZ
@given(items=batch_items)
def test_json_and_msgpack_decode_the_same_data_identically(items: list[Any]) -> None:
    try:
        packed = msgpack.packb({"readings": items}, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return  # integers past 64 bits have no msgpack form
    from_msgpack = decode_readings(packed, "application/msgpack", now_ms=NOW_MS)
    from_json = decode_readings(
        json.dumps({"readings": items}).encode(), "application/json", now_ms=NOW_MS
    )
    assert from_json == from_msgpack
    assert_accounts_for_every_item(from_msgpack, len(items))


@FUZZ
@given(payload=json_values, fmt=formats)
def test_random_predict_queries_raise_nothing_but_body_error(payload: Any, fmt: str) -> None:
    try:
        body = json.dumps(payload).encode() if fmt == "json" else msgpack.packb(payload)
    except (OverflowError, ValueError, TypeError):
        return
    with contextlib.suppress(BodyError):
        decode_predict_query(body, CONTENT_TYPE[fmt])


valid_readings = st.lists(
    st.builds(
        Reading,
        sensor_id=st.text(min_size=1, max_size=16),
        location_id=st.integers(0, 2**31 - 1),
        reading_id=st.text(min_size=1, max_size=16),
        timestamp=st.integers(0, NOW_MS),
        animals_lower=st.integers(0, 100) | st.floats(0.0, 99.5),
        animals_upper=st.integers(100, 10**9) | st.floats(100.0, 1e9),
        percent_zebras=st.floats(0.0, 1.0),
    ),
    min_size=1,
    max_size=10,
)


@FUZZ
@given(facts=valid_readings, fmt=formats, data=st.data())
def test_truncated_valid_body_is_a_malformed_body(
    facts: list[Reading], fmt: WireFormat, data: st.DataObject
) -> None:
    body = encode_readings(facts, fmt)
    cut = data.draw(st.integers(0, len(body) - 1))
    result = decode_or_body_error(body[:cut], CONTENT_TYPE[fmt])
    assert isinstance(result, BodyError)
    assert result.code in {"malformed_json", "malformed_msgpack", "invalid_utf8"}


@FUZZ
@given(facts=valid_readings, fmt=formats, data=st.data())
def test_corrupted_valid_body_raises_nothing_but_body_error(
    facts: list[Reading], fmt: WireFormat, data: st.DataObject
) -> None:
    body = bytearray(encode_readings(facts, fmt))
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    result = decode_or_body_error(bytes(body), CONTENT_TYPE[fmt])
    if not isinstance(result, BodyError):
        assert_accounts_for_every_item(result, len(result.items) + len(result.rejected))


@FUZZ
@given(
    pattern=st.lists(st.sampled_from(["list", "map"]), min_size=1, max_size=4),
    depth=st.integers(1, 40) | st.integers(1, 3_000),
    fmt=formats,
)
def test_deep_nesting_is_too_deep_or_decodes(
    pattern: list[str], depth: int, fmt: WireFormat
) -> None:
    openers = (pattern * depth)[:depth]
    if fmt == "json":
        head = "".join("[" if kind == "list" else '{"k":' for kind in openers)
        tail = "".join("]" if kind == "list" else "}" for kind in reversed(openers))
        body = ('{"readings": [' + head + "1" + tail + "]}").encode()
    else:
        head_bytes = b"".join(b"\x91" if kind == "list" else b"\x81\xa1k" for kind in openers)
        body = b"\x81\xa8readings\x91" + head_bytes + b"\x01"
    result = decode_or_body_error(body, CONTENT_TYPE[fmt])
    if isinstance(result, BodyError):
        assert result.code == "too_deep"
    else:
        assert_accounts_for_every_item(result, 1)


@FUZZ
@given(sensor_id=st.text(alphabet='[]{}"\\ a\u00e9', min_size=1, max_size=128))
def test_brackets_quotes_and_escapes_inside_strings_never_look_like_nesting(
    sensor_id: str,
) -> None:
    fact = Reading(sensor_id, 1, "r", NOW_MS, 1, 2, 0.5)
    batch = decode_readings(encode_readings([fact], "json"), None, now_ms=NOW_MS)
    assert batch.items == (fact,)


@FUZZ
@given(facts=valid_readings, fmt=formats, data=st.data())
def test_the_talks_spelling_decodes_to_the_same_readings(
    facts: list[Reading], fmt: WireFormat, data: st.DataObject
) -> None:
    """Each field by either name (never both), ids as integers when they are decimal text:
    the same readings as our own spelling."""
    ours = decode_readings(encode_readings(facts, fmt), CONTENT_TYPE[fmt], now_ms=NOW_MS)
    talk_items = []
    for fact in ours.items:
        item: dict[str, Any] = {}
        for name, value in reading_to_wire(fact).items():
            key = _CAMEL.get(name, name) if data.draw(st.booleans()) else name
            item[key] = value
        talk_items.append(item)
    body = (json.dumps({"readings": talk_items}).encode() if fmt == "json"
            else msgpack.packb({"readings": talk_items}, use_bin_type=True))
    theirs = decode_readings(body, CONTENT_TYPE[fmt], now_ms=NOW_MS)
    assert theirs.items == ours.items and theirs.rejected == ours.rejected
    as_ints = [dict(i, sensor_id=int(i["sensor_id"])) if "sensor_id" in i
               and i["sensor_id"].isascii() and i["sensor_id"].isdigit()
               and i["sensor_id"] == str(int(i["sensor_id"]))
               else i for i in talk_items]
    again = decode_readings(json.dumps({"readings": as_ints}).encode(), None, now_ms=NOW_MS)
    assert again.items == ours.items


# The fast path for {"location_id": n} must decode exactly as the general one: bodies near
# its pattern (whitespace, leading zeros, signs, big numbers, other keys, trailing bytes).
_blank = st.text(alphabet=" \t\n\r\x0b\x0c", max_size=3)
_numbers = (st.integers(min_value=-5, max_value=2**33).map(str)
            | st.sampled_from(["007", "0", "00", "-0", "1e3", "7.0", "2147483647",
                               "2147483648", "99999999999", "+7", "", "7 7"]))
_keys = st.sampled_from(['"location_id"', '"location_id "', '"Location_id"', "location_id",
                         '"location_id", "x"'])
_near_fast_bodies = st.builds(
    lambda b1, k, b2, b3, n, b4, tail, b5: f"{b1}{{{b2}{k}{b3}:{n}{b4}}}{tail}{b5}".encode(),
    _blank, _keys, _blank, _blank, _numbers, _blank, st.sampled_from(["", "}", ",", "x"]),
    _blank)


def _decoded(body: bytes, content_type: str | None) -> Any:
    try:
        return decode_predict_query(body, content_type)
    except BodyError as exc:
        return ("error", exc.code, exc.detail)


@FUZZ
@given(_near_fast_bodies, st.sampled_from([None, "application/json"]))
@example(b'{"location_id": 007}', None)
@example(b'{"location_id":00}', None)
@example(b'{"location_id": 2147483648}', None)
@example(b'{"location_id": -0}', None)
@example(b'\x0b{"location_id": 7}', None)
@example(b'{"location_id": 7}}', None)
@example(b' {\t"location_id"\r:\n2147483647 } ', "application/json")
def test_the_location_fast_path_decodes_as_the_general_path(body: bytes,
                                                            content_type: str | None) -> None:
    general = _decoded(body, "application/json; charset=utf-8")  # never the fast path
    assert _decoded(body, content_type) == general


# JSON parsed by orjson first must be exactly what the strict parser gives (types, values,
# duplicate keys marked, errors named): bodies built as text, so numbers come in every
# spelling (exponents, long mantissas, huge integers, -0) and keys may repeat.
_number_texts = (st.integers().map(str)
                 | st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]).map(str)
                 | st.floats(allow_nan=False, allow_infinity=False).map(repr)
                 | st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.25g}")
                 | st.sampled_from(["-0", "-0.0", "1E5", "1e-400", "1e400", "0.1e1", "NaN",
                                    "Infinity", "1.0000000000000000000001", "5e-324"]))
_key_texts = st.sampled_from(['"a"', '"b"', '"a:b"', '"\\u00e9"', '"location_id"', '"x"'])
_json_texts = st.recursive(
    _number_texts | st.sampled_from(["true", "false", "null", '"s"', '"t:u"']),
    lambda inner: (st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
                   | st.lists(st.tuples(_key_texts, inner), max_size=4).map(
                       lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")),
    max_leaves=12)


def _typed(value: Any) -> Any:
    from messages._wire_parse import DuplicateKeys

    if isinstance(value, dict):
        marked = getattr(value, "duplicate", None) if isinstance(value, DuplicateKeys) else None
        return ("dict", marked, tuple((k, _typed(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(_typed(v) for v in value))
    if isinstance(value, float) and value != value:
        return ("float", "nan")
    return (type(value).__name__, repr(value))


def _parsed(parse: Any, data: bytes) -> Any:
    try:
        return _typed(parse(data))
    except BodyError as exc:
        return ("error", exc.code)


@settings(max_examples=400, deadline=None)
@given(_json_texts)
def test_json_parsed_by_orjson_is_what_the_strict_parser_gives(text: str) -> None:
    from messages._wire_parse import _parse_json, _parse_json_strict

    data = text.encode()
    assert _parsed(_parse_json, data) == _parsed(_parse_json_strict, data)


# The fast path for {"features": {...}} must decode exactly as the general one: names and
# values of every kind near it (repeated names, integers, huge ones, NaN, nested values,
# names with ':' or non-ASCII, other keys beside).
_feature_names = st.sampled_from(['"a"', '"b"', '"a"', '"c:d"', '"\\u00e9"', '""', '"x" ',
                                  '"' + "n" * 129 + '"'])
_feature_values = (st.floats(allow_nan=False, allow_infinity=False).map(repr)
                   | st.integers(-10, 10).map(str)
                   | st.sampled_from(["1" * 25, "1e400", "NaN", "null", "true", '"1"', "[1.5]",
                                      '{"a": 1.5}', "-0.0", "1.0000000000000000000001"]))
_features_bodies = st.builds(
    lambda pairs, extra: ('{"features": {' + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
                          + extra + "}").encode(),
    st.lists(st.tuples(_feature_names, _feature_values), max_size=5),
    st.sampled_from(["", ', "deadline_ms": 5', ', "location_id": 1', ', "x": 1']))


@FUZZ
@given(_features_bodies, st.sampled_from([None, "application/json"]))
@example(b'{"features": {"a": 1.5, "a": 2.5}}', None)
@example(b'{"features": {"a": 1111111111111111111111111.0}}', None)
@example(b'{"features": {"a:b": 1.5}}', None)
@example(b'{"features": {"a": 1.5, "b": 2}}', None)
@example(b'{"features": {"a": 1' + b"0" * 400 + b'}}', None)
def test_the_features_fast_path_decodes_as_the_general_path(body: bytes,
                                                            content_type: str | None) -> None:
    general = _decoded(body, "application/json; charset=utf-8")  # never a fast path
    assert _decoded(body, content_type) == general
