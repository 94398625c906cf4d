"""The external wire: strict msgpack/JSON decoding of batches and queries, and encoding answers.

This is the one place where bytes from gateways and services become facts. Decoding never
raises anything but ``BodyError``: a body that cannot be used as a whole is a ``BodyError``
(an HTTP 400, or 415 for an unknown media type); a bad item inside a usable batch becomes one
``ItemError`` and the good items next to it are kept. Validation is plain loops over dicts,
with no exception on the happy path, because the collector decodes ~100k readings/s per core.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import msgpack

from messages.facts import ItemError, Outcome, Reading

__all__ = [
    "BodyError",
    "DecodedBatch",
    "PredictQuery",
    "UnsupportedMediaType",
    "WireFormat",
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
WireFormat = Literal["json", "msgpack"]

_MSGPACK_MEDIA_TYPES = frozenset(
    {"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"}
)
_MAX_DEPTH = 32  # real bodies nest 3 deep; anything far deeper is an attack, not data
_MAX_ID_CHARS = 128
_MAX_LOCATION = 2**31 - 1
_MAX_ANIMALS = 10**9
_MAX_FEATURES = 256
_MAX_MSGPACK_STR = 1 << 20


class BodyError(ValueError):
    """The whole body is unusable (HTTP 400): ``code`` names why, ``detail`` says where."""

    code: str
    detail: str
    status: int = 400

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


class UnsupportedMediaType(BodyError):
    """The body's content type is neither JSON nor msgpack (HTTP 415)."""

    status: int = 415


@dataclass(frozen=True, slots=True)
class DecodedBatch(Generic[T]):
    """The valid items of a batch, each one's index in the body, and the rejected items."""

    items: tuple[T, ...]
    indices: tuple[int, ...]
    rejected: tuple[ItemError, ...]


@dataclass(frozen=True, slots=True)
class PredictQuery:
    """A prediction request: exactly one of a location (latest features) or explicit features."""

    location_id: int | None
    features: tuple[tuple[str, float], ...] | None


def wire_format(content_type: str | None) -> WireFormat:
    """The wire format a Content-Type names; no content type means JSON."""
    if content_type is None or not content_type.strip():
        return "json"
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        return "json"
    if media in _MSGPACK_MEDIA_TYPES:
        return "msgpack"
    raise UnsupportedMediaType(
        "unsupported_media_type",
        f"{_show(content_type)}: send application/json or application/msgpack",
    )


# --- parsing: bytes -> plain values, or BodyError --------------------------------------------


class _DuplicateKeys(dict[str, Any]):
    """An object that named a key twice; kept so the error lands on the item, not the body."""

    __slots__ = ("duplicate",)
    duplicate: str


class _Refused(Exception):
    """Raised inside msgpack's hooks; becomes malformed_msgpack."""


def _object_from_pairs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[Any] = set()
    marked = _DuplicateKeys(pairs)
    for key, _ in pairs:
        if key in seen:
            marked.duplicate = key
            break
        seen.add(key)
    return marked


def _msgpack_object_from_pairs(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    for key, _ in pairs:
        if type(key) is not str:  # strict_map_key still lets bin (bytes) keys through
            raise _Refused(f"map key {_show(key)} is not a string")
    return _object_from_pairs(pairs)


def _reject_ext(code: int, data: bytes) -> Any:
    raise _Refused(f"extension type {code} is not accepted")


_JSON = json.JSONDecoder(
    object_pairs_hook=_object_from_pairs,
    # NaN/Infinity parse as floats so they become a per-item not_finite, not a body error.
    parse_constant={"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.__getitem__,
)
_ONLY_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_ONLY_BRACKETS_AND_QUOTES = bytes(range(256)).translate(None, b'[]{}"')
_DEEP_RUN = re.compile(rb"[\[{]{%d}" % (_MAX_DEPTH + 1))


def _json_too_deep(data: bytes) -> bool:
    """Cheap pre-limit: a run of nested openers (keys and commas ignored) past the limit.

    The first look ignores strings (one translate, ~1 ms per MB); only when it fires are
    strings stripped to make sure the brackets are structure. Deeper shapes it misses still
    end in RecursionError inside the parser, which is caught too.
    """
    if not _DEEP_RUN.search(data.translate(None, _ONLY_BRACKETS)):
        return False
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = b"".join(unescaped.translate(None, _ONLY_BRACKETS_AND_QUOTES).split(b'"')[::2])
    return _DEEP_RUN.search(structure) is not None


def _parse_json(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError("invalid_utf8", f"byte {exc.start} is not valid UTF-8") from None
    if _json_too_deep(data):
        raise BodyError("too_deep", f"nesting deeper than {_MAX_DEPTH}")
    try:
        return _JSON.decode(text)
    except RecursionError:
        raise BodyError("too_deep", f"nesting deeper than {_MAX_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise BodyError("malformed_json", f"{exc.msg} at character {exc.pos}") from None
    except Exception as exc:  # e.g. an integer past Python's digit limit: never escape
        raise BodyError("malformed_json", str(exc)[:200]) from None


def _parse_msgpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=_msgpack_object_from_pairs,
            ext_hook=_reject_ext,
            max_ext_len=0,  # also refuses the built-in timestamp ext, which skips ext_hook
            max_str_len=min(len(data), _MAX_MSGPACK_STR),
            max_bin_len=min(len(data), _MAX_MSGPACK_STR),
            max_array_len=len(data),
            max_map_len=len(data),
        )
    except (msgpack.StackError, RecursionError):
        raise BodyError("too_deep", "nesting deeper than msgpack's limit") from None
    except UnicodeDecodeError:
        raise BodyError("invalid_utf8", "a string is not valid UTF-8") from None
    except msgpack.ExtraData:
        raise BodyError("malformed_msgpack", "trailing bytes after the body") from None
    except Exception as exc:  # truncated, bad type byte, limits, ext, non-str keys: never escape
        raise BodyError("malformed_msgpack", str(exc)[:200] or type(exc).__name__) from None


def _parse(body: bytes, content_type: str | None) -> Any:
    data = body if type(body) is bytes else bytes(body)  # bytearray, memoryview
    if wire_format(content_type) == "msgpack":
        return _parse_msgpack(data)
    return _parse_json(data)


# --- describing values in error details --------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes):
        return "binary"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    if isinstance(value, str | bytes):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a very large integer"
    if value is None or isinstance(value, int | float):
        return repr(value)
    return _kind(value)


# --- per-field checks: None when fine, else (code, what is wrong) ------------------------------

_Problem = tuple[str, str]


def _identifier(value: Any) -> _Problem | None:
    if type(value) is not str:
        return "wrong_type", f"expected a string, got {_kind(value)}"
    if not 0 < len(value) <= _MAX_ID_CHARS:
        return "out_of_range", f"expected 1 to {_MAX_ID_CHARS} characters, got {len(value)}"
    if not value.isascii() and not _encodable(value):
        return "invalid_utf8", "contains a lone surrogate"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _integer(value: Any, high: int) -> _Problem | None:
    if type(value) is not int:
        return "wrong_type", f"expected an integer, got {_kind(value)}"
    if not 0 <= value <= high:
        return "out_of_range", f"expected 0 to {high}, got {_show(value)}"
    return None


def _location(value: Any) -> _Problem | None:
    return _integer(value, _MAX_LOCATION)


def _count(value: Any) -> _Problem | None:
    return _integer(value, _MAX_ANIMALS)


def _timestamp(value: Any) -> _Problem | None:
    if type(value) is not int:
        return "wrong_type", f"expected integer milliseconds, got {_kind(value)}"
    if value < 0:
        return "out_of_range", f"expected 0 or more, got {_show(value)}"
    return None  # the future bound is checked last, once the item is otherwise valid


def _number(value: Any) -> _Problem | None:
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            return "not_finite", f"expected a finite number, got {value!r}"
    elif kind is not int:
        return "wrong_type", f"expected a number, got {_kind(value)}"
    return None


def _share(value: Any) -> _Problem | None:
    problem = _number(value)
    if problem is None and not 0 <= value <= 1:
        return "out_of_range", f"expected 0.0 to 1.0, got {_show(value)}"
    return problem


def _label(value: Any) -> _Problem | None:
    if type(value) is not bool:
        return "wrong_type", f"expected a boolean, got {_kind(value)}"
    return None


_Check = Callable[[Any], "_Problem | None"]
_READING_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("sensor_id", _identifier),
    ("location_id", _location),
    ("reading_id", _identifier),
    ("timestamp", _timestamp),
    ("animals_lower", _count),
    ("animals_upper", _count),
    ("percent_zebras", _share),
)
_OUTCOME_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("location_id", _location),
    ("outcome_id", _identifier),
    ("timestamp", _timestamp),
    ("label", _label),
)
_READING_FIELDS = tuple(name for name, _ in _READING_CHECKS)
_OUTCOME_FIELDS = tuple(name for name, _ in _OUTCOME_CHECKS)
_READING_KEYS = frozenset(_READING_FIELDS)
_OUTCOME_KEYS = frozenset(_OUTCOME_FIELDS)


def _shape_problem(obj: Any, fields: Sequence[str], what: str) -> _Problem:
    """Why ``obj`` is not an object with exactly ``fields`` (callers know it is not)."""
    if not isinstance(obj, dict):
        return "not_an_object", f"expected an object, got {_kind(obj)}"
    if isinstance(obj, _DuplicateKeys):
        return "duplicate_field", f"{_show(obj.duplicate)}: given more than once"
    unknown = sorted(key for key in obj if key not in fields)
    if unknown:
        return "unknown_field", f"{_show(unknown[0])}: not a field of {what}"
    missing = next((name for name in fields if name not in obj), "?")
    return "missing_field", f"{missing}: required"


def _fields_problem(obj: dict[str, Any], checks: tuple[tuple[str, _Check], ...]) -> _Problem | None:
    for name, check in checks:
        problem = check(obj[name])
        if problem is not None:
            return problem[0], f"{name}: {problem[1]}"
    return None


def _reading(item: Any, latest: int) -> Reading | _Problem:
    """The reading in ``item``, or its first problem.

    The happy path is one inline test of every rule (a third faster than the table); any
    doubt, including non-ASCII ids, goes to ``_checked_reading``, which decides and explains.
    """
    if type(item) is dict and item.keys() == _READING_KEYS:
        sensor_id, reading_id = item["sensor_id"], item["reading_id"]
        location_id, timestamp = item["location_id"], item["timestamp"]
        lower, upper, share = item["animals_lower"], item["animals_upper"], item["percent_zebras"]
        if (
            type(sensor_id) is str
            and 0 < len(sensor_id) <= _MAX_ID_CHARS
            and sensor_id.isascii()
            and type(reading_id) is str
            and 0 < len(reading_id) <= _MAX_ID_CHARS
            and reading_id.isascii()
            and type(location_id) is int
            and 0 <= location_id <= _MAX_LOCATION
            and type(timestamp) is int
            and 0 <= timestamp <= latest
            and type(lower) is int
            and type(upper) is int
            and 0 <= lower <= upper <= _MAX_ANIMALS
            and (type(share) is float or type(share) is int)
            and 0.0 <= share <= 1.0
        ):
            return Reading(
                sensor_id, location_id, reading_id, timestamp, lower, upper, float(share)
            )
    return _checked_reading(item, latest)


def _checked_reading(item: Any, latest: int) -> Reading | _Problem:
    if type(item) is not dict or item.keys() != _READING_KEYS:
        return _shape_problem(item, _READING_FIELDS, "a reading")
    problem = _fields_problem(item, _READING_CHECKS)
    if problem is not None:
        return problem
    lower, upper, timestamp = item["animals_lower"], item["animals_upper"], item["timestamp"]
    if lower > upper:
        return "bounds_inverted", f"animals_lower {lower} is above animals_upper {upper}"
    if timestamp > latest:
        return "future_timestamp", f"timestamp: {timestamp} is after now + max_future_ms ({latest})"
    return Reading(
        item["sensor_id"],
        item["location_id"],
        item["reading_id"],
        timestamp,
        lower,
        upper,
        float(item["percent_zebras"]),
    )


def _outcome(item: Any, latest: int) -> Outcome | _Problem:
    if type(item) is not dict or item.keys() != _OUTCOME_KEYS:
        return _shape_problem(item, _OUTCOME_FIELDS, "an outcome")
    problem = _fields_problem(item, _OUTCOME_CHECKS)
    if problem is not None:
        return problem
    timestamp = item["timestamp"]
    if timestamp > latest:
        return "future_timestamp", f"timestamp: {timestamp} is after now + max_future_ms ({latest})"
    return Outcome(item["location_id"], item["outcome_id"], timestamp, item["label"])


# --- decoding ----------------------------------------------------------------------------------


def _body_object(doc: Any, fields: Sequence[str], what: str) -> dict[str, Any]:
    """The top-level object, if it is one and names no key outside ``fields``."""
    if type(doc) is not dict or not doc.keys() <= set(fields):
        raise BodyError(*_shape_problem(doc, fields, what))
    return doc


def _decode_batch(
    body: bytes,
    content_type: str | None,
    key: str,
    to_fact: Callable[[Any, int], T | _Problem],
    latest: int,
    max_items: int,
) -> DecodedBatch[T]:
    doc = _body_object(_parse(body, content_type), (key,), f"a /{key} body")
    if key not in doc:
        raise BodyError("missing_field", f"{key}: required")
    items = doc[key]
    if type(items) is not list:
        raise BodyError("wrong_type", f"{key}: expected an array, got {_kind(items)}")
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
    return _decode_batch(body, content_type, "readings", _reading, latest, max_items)


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
    return _decode_batch(body, content_type, "outcomes", _outcome, latest, max_items)


def decode_predict_query(body: bytes, content_type: str | None) -> PredictQuery:
    """Decode ``{"location_id": n}`` or ``{"features": {name: number}}``; else ``BodyError``."""
    doc = _body_object(_parse(body, content_type), ("location_id", "features"), "a query")
    if len(doc) != 1:
        if not doc:
            raise BodyError("missing_field", "give location_id or features")
        raise BodyError("conflicting_fields", "give location_id or features, not both")
    if "location_id" in doc:
        problem = _location(doc["location_id"])
        if problem is not None:
            raise BodyError(problem[0], f"location_id: {problem[1]}")
        return PredictQuery(doc["location_id"], None)
    features = doc["features"]
    if not isinstance(features, dict):
        raise BodyError("wrong_type", f"features: expected an object, got {_kind(features)}")
    if isinstance(features, _DuplicateKeys):
        raise BodyError("duplicate_field", f"features: {_show(features.duplicate)} given twice")
    if len(features) > _MAX_FEATURES:
        raise BodyError("too_many_items", f"features: {len(features)}, at most {_MAX_FEATURES}")
    pairs = []
    for name, value in features.items():
        problem = _identifier(name) or _number(value)
        if problem is not None:
            raise BodyError(problem[0], f"features[{_show(name)}]: {problem[1]}")
        pairs.append((name, float(value)))
    return PredictQuery(None, tuple(sorted(pairs)))


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
