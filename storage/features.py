"""The ``FeatureStore`` boundary: collections, feature validity, switches, rows, watermarks.

Everything is an append-only log: the "current" value of anything (the active
collection, a consumer's fact cursor) is read from the newest row, so no row is
ever updated and a restarted actor rebuilds its state by reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from storage.facts import FactCursor
from storage.records import FeatureCollection, FeatureRow

__all__ = ["CollectionSwitch", "FeatureStore", "InvalidFeature"]


@dataclass(frozen=True, slots=True)
class InvalidFeature:
    """A feature found to break its type's rules, why, and when."""

    feature: str
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class CollectionSwitch:
    """One change of the active feature collection: to which one, why, and when."""

    collection_id: int
    reason: str
    at_ms: int


class FeatureStore(Protocol):
    """Feature collections and online feature rows, insert-only, with point-in-time lookup."""

    def register_collection(self, collection: FeatureCollection) -> bool:
        """Add a collection; False if this identical one exists; ``ValueError`` if it differs."""
        ...

    def collections(self) -> tuple[FeatureCollection, ...]:
        """Every registered collection, by id."""
        ...

    def mark_invalid(self, feature: str, reason: str, at_ms: int) -> None:
        """Record that ``feature`` is invalid (it stays invalid)."""
        ...

    def invalid_features(self) -> frozenset[str]:
        """Names of every feature ever marked invalid."""
        ...

    def invalid_feature_log(self) -> tuple[InvalidFeature, ...]:
        """Every invalid-feature record, oldest first."""
        ...

    def record_switch(self, collection_id: int, reason: str, at_ms: int) -> None:
        """Record that ``collection_id`` is now the active collection."""
        ...

    def active_collection_id(self) -> int | None:
        """The collection of the newest switch, or None before any switch."""
        ...

    def switches(self) -> tuple[CollectionSwitch, ...]:
        """Every switch, oldest first."""
        ...

    def write_rows(self, rows: Sequence[FeatureRow]) -> int:
        """Insert rows keyed by (collection, location, as_of); skip known keys; count written."""
        ...

    def latest_row(self, collection_id: int, location_id: int) -> FeatureRow | None:
        """The location's row with the newest ``as_of_ms``, or None."""
        ...

    def latest_rows(self, collection_id: int) -> tuple[FeatureRow, ...]:
        """The newest row of every location in the collection, by location."""
        ...

    def row_as_of(self, collection_id: int, location_id: int, at_ms: int) -> FeatureRow | None:
        """The newest row with ``as_of_ms <= at_ms`` (point-in-time lookup), or None."""
        ...

    def cursor(self, name: str) -> FactCursor:
        """Consumer ``name``'s fact cursor: every one it recorded, merged; empty if none."""
        ...

    def advance_cursor(self, name: str, cursor: FactCursor, at_ms: int) -> None:
        """Merge ``cursor`` into ``name``'s; one the current one covers changes nothing."""
        ...

    def close(self) -> None:
        """Release the backend's connection; idempotent."""
        ...
