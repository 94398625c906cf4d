"""The ``FactStore`` boundary: insert-only readings and outcomes, read back through cursors.

The cut is here because every backend (SQLite, Couchbase) must give the same
guarantees, proved by one contract suite: an insert is atomic and durable when it
returns; a key seen before is a duplicate, never an overwrite and never an error;
and a consumer that pages through the log with a ``FactCursor`` sees every stored
fact exactly once, whatever crashed in between.

There is no global ingest sequence: with many writers on many hosts it would be
the one key every write touches. Each writer keeps a log of its own, and a cursor
holds one position per writer (SQLite, with one writer lock per file, has a single
log: its rowid). Positions only move forward, so two cursors merge by taking each
writer's furthest position, and a consumer that saves a cursor late or twice
never goes back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from messages.facts import Outcome, Reading

__all__ = ["FactCounts", "FactCursor", "FactPage", "FactStore", "InsertResult"]

T = TypeVar("T")

_MAX_CURSOR_CHARS = 1_000_000


@dataclass(frozen=True, slots=True)
class FactCursor:
    """How far a consumer has read the facts: for each writer's log, ``(entry, offset)``.

    ``entry`` counts the writer's log entries read whole, ``offset`` the facts read of
    the next one (SQLite: the last rowid read, offset 0). Sorted by writer, so equal
    cursors compare and encode equal. The empty cursor is the start of every log.
    """

    positions: tuple[tuple[str, int, int], ...] = ()

    def position(self, writer: str) -> tuple[int, int]:
        """``writer``'s ``(entry, offset)``; ``(0, 0)`` if it has none yet."""
        for name, entry, offset in self.positions:
            if name == writer:
                return entry, offset
        return 0, 0

    def at(self, writer: str, entry: int, offset: int = 0) -> FactCursor:
        """This cursor with ``writer`` moved to ``(entry, offset)`` (even backwards: the
        caller pages forward; ``merge`` is what never goes back)."""
        kept = {name: (e, o) for name, e, o in self.positions}
        kept[writer] = (entry, offset)
        return FactCursor.of(kept)

    def merge(self, other: FactCursor) -> FactCursor:
        """Each writer at the further of its two positions."""
        merged = {name: (e, o) for name, e, o in self.positions}
        for name, e, o in other.positions:
            merged[name] = max(merged.get(name, (0, 0)), (e, o))
        return FactCursor.of(merged)

    def covers(self, other: FactCursor) -> bool:
        """Whether every position of ``other`` is at or behind this cursor's."""
        return all(self.position(name) >= (e, o) for name, e, o in other.positions)

    @staticmethod
    def of(positions: Mapping[str, tuple[int, int]]) -> FactCursor:
        """A cursor from ``{writer: (entry, offset)}``."""
        return FactCursor(tuple(sorted((name, e, o) for name, (e, o) in positions.items())))

    def to_text(self) -> str:
        """Compact JSON, as stores keep it: ``[[writer, entry, offset], ...]``."""
        return json.dumps([list(p) for p in self.positions], separators=(",", ":"))

    @staticmethod
    def from_text(text: str) -> FactCursor:
        """The inverse of ``to_text``; ``ValueError`` for anything else."""
        if len(text) > _MAX_CURSOR_CHARS:
            raise ValueError("fact cursor too long")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"fact cursor is not JSON: {exc}") from None
        if not isinstance(raw, list):
            raise ValueError("fact cursor must be a list of [writer, entry, offset]")
        positions: dict[str, tuple[int, int]] = {}
        for item in raw:
            if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                    or any(type(v) is not int or v < 0 for v in item[1:])
                    or item[0] in positions):
                raise ValueError(f"bad fact cursor position: {item!r}")
            positions[item[0]] = (item[1], item[2])
        return FactCursor.of(positions)


@dataclass(frozen=True, slots=True)
class FactPage(Generic[T]):
    """Facts read past a cursor, and the cursor to read on from."""

    items: tuple[T, ...]
    cursor: FactCursor


@dataclass(frozen=True, slots=True)
class InsertResult:
    """What one batch insert did: facts newly stored, and items already known."""

    accepted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class FactCounts:
    """How many facts the store holds of each kind."""

    readings: int
    outcomes: int


class FactStore(Protocol):
    """Insert-only facts keyed by identity, read back through cursors, by location or key."""

    def insert_readings(self, readings: Sequence[Reading]) -> InsertResult:
        """Store a batch atomically, durably; a known ``(sensor_id, reading_id)`` is a duplicate."""
        ...

    def insert_outcomes(self, outcomes: Sequence[Outcome]) -> InsertResult:
        """Store a batch atomically, durably; a known (location_id, outcome_id) is a duplicate."""
        ...

    def readings_since(self, cursor: FactCursor, limit: int) -> FactPage[Reading]:
        """About ``limit`` readings past ``cursor`` (each writer's in its log order; a page
        may end early, or hold the rest of one log entry past ``limit``), and the cursor
        after them. An empty page: nothing more now."""
        ...

    def outcomes_since(self, cursor: FactCursor, limit: int) -> FactPage[Outcome]:
        """Outcomes past ``cursor``, as ``readings_since``."""
        ...

    def readings_for_location(self, location_id: int, start_ms: int,
                              end_ms: int) -> tuple[Reading, ...]:
        """A location's readings with ``start_ms <= timestamp < end_ms``, ascending timestamp."""
        ...

    def all_readings(self) -> tuple[Reading, ...]:
        """Every reading (a training set's facts), each writer's in its log order."""
        ...

    def all_outcomes(self) -> tuple[Outcome, ...]:
        """Every outcome, each writer's in its log order."""
        ...

    def get_reading(self, sensor_id: str, reading_id: str) -> Reading | None:
        """The reading stored under this key, or None."""
        ...

    def get_outcome(self, location_id: int, outcome_id: str) -> Outcome | None:
        """The outcome stored under this key, or None."""
        ...

    def counts(self) -> FactCounts:
        """How many facts are stored."""
        ...

    def close(self) -> None:
        """Release the backend's connection; idempotent."""
        ...
