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
from dataclasses import dataclass
from typing import Any

from messages._wire_parse import DuplicateKeys, kind_of, show
from messages.facts import Outcome, Reading

__all__ = [
    "MAX_ID_CHARS",
    "MAX_LOCATION",
    "OUTCOME_ALIASES",
    "Problem",
    "READING_ALIASES",
    "identifier_problem",
    "location_problem",
    "number_problem",
    "shape_problem",
    "to_outcome",
    "to_reading",
]

MAX_ID_CHARS = 128
MAX_LOCATION = 2**31 - 1
_MAX_ANIMALS = 10**9
_MAX_INT_ID = 2**63  # integer ids are 64-bit, as a gateway's Int or Long

# None when fine, else (code, what is wrong).
Problem = tuple[str, str]


# --- per-field checks --------------------------------------------------------------------------


def identifier_problem(value: Any) -> Problem | None:
    """Why ``value`` is not a usable id (1 to 128 characters of encodable text, or a 64-bit
    integer: the same identity as its decimal string), if it is not."""
    if type(value) is int:
        if not -_MAX_INT_ID <= value < _MAX_INT_ID:
            return "out_of_range", f"expected a 64-bit integer, got {show(value)}"
        return None
    if type(value) is not str:
        return "wrong_type", f"expected a string or an integer, got {kind_of(value)}"
    if not 0 < len(value) <= MAX_ID_CHARS:
        return "out_of_range", f"expected 1 to {MAX_ID_CHARS} characters, got {len(value)}"
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
    return _integer(value, MAX_LOCATION)


def _bound(value: Any) -> Problem | None:
    """An estimate's bound: a real number, 0 to 10**9."""
    problem = number_problem(value)
    if problem is None and not 0 <= value <= _MAX_ANIMALS:
        return "out_of_range", f"expected 0 to {_MAX_ANIMALS}, got {show(value)}"
    return problem


def _real(value: int | float) -> int | float:
    """A bound as stored: a whole number as an integer (12.0 and 12 are one bound, and data
    stored before bounds could be fractional reads back unchanged), else the float."""
    return int(value) if type(value) is float and value.is_integer() else value


def _ident(value: str | int) -> str:
    """An id as stored: an integer id is its decimal string."""
    return value if type(value) is str else str(value)


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
    ("animals_lower", _bound),
    ("animals_upper", _bound),
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
#: Fields an item may leave out: a reading without ``reading_id`` is identified by its sensor
#: and timestamp (its reading id is the timestamp's decimal string).
_OPTIONAL = frozenset({"reading_id"})
#: The talk's names (``PreyReading(sensorId, locationId, timestamp, animalsLowerBound,
#: animalsUpperBound, percentZebras)``), accepted beside the snake_case ones.
READING_ALIASES = {
    "sensorId": "sensor_id", "locationId": "location_id", "readingId": "reading_id",
    "animalsLowerBound": "animals_lower", "animalsUpperBound": "animals_upper",
    "percentZebras": "percent_zebras",
}
OUTCOME_ALIASES = {"locationId": "location_id", "outcomeId": "outcome_id"}


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


def _fields_problem(obj: dict[str, Any], checks: tuple[tuple[str, _Check], ...],
                    given: dict[str, str]) -> Problem | None:
    for name, check in checks:
        if name not in obj:
            continue  # an optional field left out
        problem = check(obj[name])
        if problem is not None:
            return problem[0], f"{given.get(name, name)}: {problem[1]}"
    return None


@dataclass(frozen=True, slots=True)
class _Item:
    """An item's fields under our names, and the name each was given by."""

    values: dict[str, Any]
    given: dict[str, str]


def _normalized(item: Any, fields: Sequence[str], aliases: dict[str, str], what: str,
                ) -> _Item | Problem:
    """``item`` with the talk's camelCase names turned into ours, and which name each field
    was given by (for error details); or why it is not an item: not an object, a field named
    twice (in one spelling or in both), an unknown field, a required one missing."""
    if not isinstance(item, dict) or isinstance(item, DuplicateKeys):
        return shape_problem(item, fields, what)
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in item.items():
        name: str = aliases.get(key) or key
        if name not in fields:
            return "unknown_field", f"{show(key)}: not a field of {what}"
        if name in out:
            return "duplicate_field", (f"{show(given[name])} and {show(key)}: one field "
                                       "given twice")
        out[name] = value
        given[name] = key
    missing = next((name for name in fields if name not in out and name not in _OPTIONAL),
                   None)
    if missing is not None:
        return "missing_field", f"{missing}: required"
    return _Item(out, given)


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
            and 0 < len(sensor_id) <= MAX_ID_CHARS
            and sensor_id.isascii()
            and type(reading_id) is str
            and 0 < len(reading_id) <= MAX_ID_CHARS
            and reading_id.isascii()
            and type(location_id) is int
            and 0 <= location_id <= MAX_LOCATION
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
    """Every other form (the talk's names, integer ids, real-valued bounds, no reading id)
    and every problem, named by the field as the item spelled it."""
    shaped = _normalized(item, _READING_FIELDS, READING_ALIASES, "a reading")
    if not isinstance(shaped, _Item):
        return shaped
    obj, given = shaped.values, shaped.given
    problem = _fields_problem(obj, _READING_CHECKS, given)
    if problem is not None:
        return problem
    lower, upper, timestamp = obj["animals_lower"], obj["animals_upper"], obj["timestamp"]
    if lower > upper:
        return "bounds_inverted", (f"{given['animals_lower']} {show(lower)} is above "
                                   f"{given['animals_upper']} {show(upper)}")
    if timestamp > latest:
        return "future_timestamp", (f"{given['timestamp']}: {timestamp} is after now + "
                                    f"max_future_ms ({latest})")
    reading_id = _ident(obj["reading_id"]) if "reading_id" in obj else str(timestamp)
    return Reading(
        _ident(obj["sensor_id"]),
        obj["location_id"],
        reading_id,
        timestamp,
        _real(lower),
        _real(upper),
        float(obj["percent_zebras"]),
    )


def to_outcome(item: Any, latest: int) -> Outcome | Problem:
    """The outcome in ``item``, or its first problem."""
    shaped = _normalized(item, _OUTCOME_FIELDS, OUTCOME_ALIASES, "an outcome")
    if not isinstance(shaped, _Item):
        return shaped
    obj, given = shaped.values, shaped.given
    problem = _fields_problem(obj, _OUTCOME_CHECKS, given)
    if problem is not None:
        return problem
    timestamp = obj["timestamp"]
    if timestamp > latest:
        return "future_timestamp", (f"{given['timestamp']}: {timestamp} is after now + "
                                    f"max_future_ms ({latest})")
    return Outcome(obj["location_id"], _ident(obj["outcome_id"]), timestamp, obj["label"])
