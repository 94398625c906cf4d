"""Plain values to facts: the field rules for readings and outcomes, as problems not exceptions.

The cut is here because these rules are per item: a bad item inside a usable batch is one
``(code, detail)`` problem, returned rather than raised, so the good items next to it are kept
and the happy path never pays for an exception (the collector decodes ~100k readings/s per
core). Whether the body as a whole is usable is decided below (``_wire_parse``) and above
(``codec``), never here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from messages._wire_parse import DuplicateKeys, kind_of, show
from messages.facts import Outcome, Reading

__all__ = [
    "Problem",
    "identifier_problem",
    "location_problem",
    "number_problem",
    "shape_problem",
    "to_outcome",
    "to_reading",
]

_MAX_ID_CHARS = 128
_MAX_LOCATION = 2**31 - 1
_MAX_ANIMALS = 10**9

# None when fine, else (code, what is wrong).
Problem = tuple[str, str]


# --- per-field checks --------------------------------------------------------------------------


def identifier_problem(value: Any) -> Problem | None:
    """Why ``value`` is not a usable id (1 to 128 characters of encodable text), if it is not."""
    if type(value) is not str:
        return "wrong_type", f"expected a string, got {kind_of(value)}"
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


def _integer(value: Any, high: int) -> Problem | None:
    if type(value) is not int:
        return "wrong_type", f"expected an integer, got {kind_of(value)}"
    if not 0 <= value <= high:
        return "out_of_range", f"expected 0 to {high}, got {show(value)}"
    return None


def location_problem(value: Any) -> Problem | None:
    """Why ``value`` is not a location id (an integer, 0 to 2**31 - 1), if it is not."""
    return _integer(value, _MAX_LOCATION)


def _count(value: Any) -> Problem | None:
    return _integer(value, _MAX_ANIMALS)


def _timestamp(value: Any) -> Problem | None:
    if type(value) is not int:
        return "wrong_type", f"expected integer milliseconds, got {kind_of(value)}"
    if value < 0:
        return "out_of_range", f"expected 0 or more, got {show(value)}"
    return None  # the future bound is checked last, once the item is otherwise valid


def number_problem(value: Any) -> Problem | None:
    """Why ``value`` is not a finite number (an integer or a finite float), if it is not."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            return "not_finite", f"expected a finite number, got {value!r}"
    elif kind is not int:
        return "wrong_type", f"expected a number, got {kind_of(value)}"
    return None


def _share(value: Any) -> Problem | None:
    problem = number_problem(value)
    if problem is None and not 0 <= value <= 1:
        return "out_of_range", f"expected 0.0 to 1.0, got {show(value)}"
    return problem


def _label(value: Any) -> Problem | None:
    if type(value) is not bool:
        return "wrong_type", f"expected a boolean, got {kind_of(value)}"
    return None


_Check = Callable[[Any], "Problem | None"]
_READING_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("sensor_id", identifier_problem),
    ("location_id", location_problem),
    ("reading_id", identifier_problem),
    ("timestamp", _timestamp),
    ("animals_lower", _count),
    ("animals_upper", _count),
    ("percent_zebras", _share),
)
_OUTCOME_CHECKS: tuple[tuple[str, _Check], ...] = (
    ("location_id", location_problem),
    ("outcome_id", identifier_problem),
    ("timestamp", _timestamp),
    ("label", _label),
)
_READING_FIELDS = tuple(name for name, _ in _READING_CHECKS)
_OUTCOME_FIELDS = tuple(name for name, _ in _OUTCOME_CHECKS)
_READING_KEYS = frozenset(_READING_FIELDS)
_OUTCOME_KEYS = frozenset(_OUTCOME_FIELDS)


# --- whole items -------------------------------------------------------------------------------


def shape_problem(obj: Any, fields: Sequence[str], what: str) -> Problem:
    """Why ``obj`` is not an object with exactly ``fields`` (callers know it is not)."""
    if not isinstance(obj, dict):
        return "not_an_object", f"expected an object, got {kind_of(obj)}"
    if isinstance(obj, DuplicateKeys):
        return "duplicate_field", f"{show(obj.duplicate)}: given more than once"
    unknown = sorted(key for key in obj if key not in fields)
    if unknown:
        return "unknown_field", f"{show(unknown[0])}: not a field of {what}"
    missing = next((name for name in fields if name not in obj), "?")
    return "missing_field", f"{missing}: required"


def _fields_problem(obj: dict[str, Any], checks: tuple[tuple[str, _Check], ...]) -> Problem | None:
    for name, check in checks:
        problem = check(obj[name])
        if problem is not None:
            return problem[0], f"{name}: {problem[1]}"
    return None


def to_reading(item: Any, latest: int) -> Reading | Problem:
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


def _checked_reading(item: Any, latest: int) -> Reading | Problem:
    if type(item) is not dict or item.keys() != _READING_KEYS:
        return shape_problem(item, _READING_FIELDS, "a reading")
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


def to_outcome(item: Any, latest: int) -> Outcome | Problem:
    """The outcome in ``item``, or its first problem."""
    if type(item) is not dict or item.keys() != _OUTCOME_KEYS:
        return shape_problem(item, _OUTCOME_FIELDS, "an outcome")
    problem = _fields_problem(item, _OUTCOME_CHECKS)
    if problem is not None:
        return problem
    timestamp = item["timestamp"]
    if timestamp > latest:
        return "future_timestamp", f"timestamp: {timestamp} is after now + max_future_ms ({latest})"
    return Outcome(item["location_id"], item["outcome_id"], timestamp, item["label"])
