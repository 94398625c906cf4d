"""The ``FactStore`` boundary: insert-only readings and outcomes with an ingest sequence.

The cut is here because every backend (SQLite, later Couchbase) must give the
same guarantees, proved by one contract suite: an insert is atomic and durable
when it returns; a key seen before is a duplicate, never an overwrite and never
an error; facts come back in ingest-sequence order so a consumer keeps only a
watermark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from messages.facts import Outcome, Reading

__all__ = ["FactCounts", "FactStore", "InsertResult"]


@dataclass(frozen=True, slots=True)
class InsertResult:
    """What one batch insert did: new facts, duplicates, and the store's sequence after it."""

    accepted: int
    duplicates: int
    watermark: int


@dataclass(frozen=True, slots=True)
class FactCounts:
    """How many facts the store holds and its newest sequence number for each kind."""

    readings: int
    outcomes: int
    reading_watermark: int
    outcome_watermark: int


class FactStore(Protocol):
    """Insert-only facts keyed by identity, read back by ingest sequence, location or key."""

    def insert_readings(self, readings: Sequence[Reading]) -> InsertResult:
        """Store a batch atomically, durably; a known ``(sensor_id, reading_id)`` is a duplicate."""
        ...

    def insert_outcomes(self, outcomes: Sequence[Outcome]) -> InsertResult:
        """Store a batch atomically, durably; a known (location_id, outcome_id) is a duplicate."""
        ...

    def readings_since(self, watermark: int, limit: int) -> tuple[tuple[int, Reading], ...]:
        """Up to ``limit`` ``(seq, reading)`` pairs with seq > watermark, ascending seq."""
        ...

    def outcomes_since(self, watermark: int, limit: int) -> tuple[tuple[int, Outcome], ...]:
        """Up to ``limit`` ``(seq, outcome)`` pairs with seq > watermark, ascending seq."""
        ...

    def readings_for_location(self, location_id: int, start_ms: int,
                              end_ms: int) -> tuple[Reading, ...]:
        """A location's readings with ``start_ms <= timestamp < end_ms``, ascending timestamp."""
        ...

    def all_readings(self, max_seq: int | None = None) -> tuple[Reading, ...]:
        """Every reading (up to ``max_seq`` if given), ascending seq: a training set's facts."""
        ...

    def all_outcomes(self, max_seq: int | None = None) -> tuple[Outcome, ...]:
        """Every outcome (up to ``max_seq`` if given), ascending seq."""
        ...

    def get_reading(self, sensor_id: str, reading_id: str) -> Reading | None:
        """The reading stored under this key, or None."""
        ...

    def get_outcome(self, location_id: int, outcome_id: str) -> Outcome | None:
        """The outcome stored under this key, or None."""
        ...

    def counts(self) -> FactCounts:
        """Fact counts and watermarks, read from one consistent snapshot."""
        ...

    def close(self) -> None:
        """Release the backend's connection; idempotent."""
        ...
