"""``FeatureStore`` on an SQLite file (WAL, durable commits, append-only tables).

Feature values are stored as little-endian float64 bytes: compact, fast, and
exact for every float, NaN included (an empty window's features are NaN).
"""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Sequence

from storage.facts import FactCursor
from storage.features import CollectionSwitch, InvalidFeature
from storage.records import FeatureCollection, FeatureRow
from storage.sqlite.connection import SQLiteBacked
from storage.sqlite.facts import SQLITE_LOG

__all__ = ["SQLiteFeatureStore", "decode_values", "encode_values"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    features TEXT NOT NULL,
    label TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS invalid_features (
    seq INTEGER PRIMARY KEY,
    feature TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS collection_switches (
    seq INTEGER PRIMARY KEY,
    collection_id INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS feature_rows (
    collection_id INTEGER NOT NULL,
    location_id INTEGER NOT NULL,
    as_of_ms INTEGER NOT NULL,
    computed_at_ms INTEGER NOT NULL,
    vals BLOB NOT NULL,
    PRIMARY KEY (collection_id, location_id, as_of_ms)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watermarks (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS watermarks_by_name ON watermarks (name, value);
CREATE TABLE IF NOT EXISTS cursors (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    cursor TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS cursors_by_name ON cursors (name, seq);
"""

_ROW_COLUMNS = "collection_id, location_id, as_of_ms, vals, computed_at_ms"


def encode_values(values: Sequence[float]) -> bytes:
    """Feature values as little-endian float64 bytes (bit-exact, NaN included)."""
    try:
        return struct.pack(f"<{len(values)}d", *values)
    except struct.error as exc:
        raise ValueError(f"feature values must be numbers: {exc}") from None


def decode_values(blob: bytes) -> tuple[float, ...]:
    """The inverse of ``encode_values``."""
    return struct.unpack(f"<{len(blob) // 8}d", blob)


def _row(row: Sequence[object]) -> FeatureRow:
    collection_id, location_id, as_of_ms, blob, computed_at_ms = row
    return FeatureRow(collection_id, location_id, as_of_ms,  # type: ignore[arg-type]
                      decode_values(blob), computed_at_ms)  # type: ignore[arg-type]


def _collection(row: Sequence[object]) -> FeatureCollection:
    id_, created_at, features, label = row
    return FeatureCollection(id_, created_at,  # type: ignore[arg-type]
                             tuple(json.loads(features)), label)  # type: ignore[arg-type]


class SQLiteFeatureStore(SQLiteBacked):
    """Feature collections, validity and switch logs, feature rows and watermarks."""

    SCHEMA = _SCHEMA

    # -- collections -------------------------------------------------------

    def register_collection(self, collection: FeatureCollection) -> bool:
        """Add a collection; False if this identical one exists; ``ValueError`` if it differs."""
        features = json.dumps(list(collection.features))
        with self._db.write() as conn:
            row = conn.execute("SELECT id, created_at, features, label FROM collections "
                               "WHERE id = ?", (collection.id,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO collections (id, created_at, features, label) "
                             "VALUES (?, ?, ?, ?)",
                             (collection.id, collection.created_at, features, collection.label))
                return True
        existing = _collection(row)
        if existing != collection:
            raise ValueError(f"feature collection {collection.id} is already registered with "
                             f"a different definition: {existing!r}")
        return False

    def collections(self) -> tuple[FeatureCollection, ...]:
        """Every registered collection, by id."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT id, created_at, features, label FROM collections "
                                "ORDER BY id").fetchall()
        return tuple(_collection(row) for row in rows)

    # -- feature validity --------------------------------------------------

    def mark_invalid(self, feature: str, reason: str, at_ms: int) -> None:
        """Record that ``feature`` is invalid (it stays invalid)."""
        with self._db.write() as conn:
            conn.execute("INSERT INTO invalid_features (feature, reason, at_ms) VALUES (?, ?, ?)",
                         (feature, reason, at_ms))

    def invalid_features(self) -> frozenset[str]:
        """Names of every feature ever marked invalid."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT DISTINCT feature FROM invalid_features").fetchall()
        return frozenset(row[0] for row in rows)

    def invalid_feature_log(self) -> tuple[InvalidFeature, ...]:
        """Every invalid-feature record, oldest first."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT feature, reason, at_ms FROM invalid_features "
                                "ORDER BY seq").fetchall()
        return tuple(InvalidFeature(*row) for row in rows)

    # -- active collection -------------------------------------------------

    def record_switch(self, collection_id: int, reason: str, at_ms: int) -> None:
        """Record that ``collection_id`` is now the active collection."""
        with self._db.write() as conn:
            conn.execute("INSERT INTO collection_switches (collection_id, reason, at_ms) "
                         "VALUES (?, ?, ?)", (collection_id, reason, at_ms))

    def active_collection_id(self) -> int | None:
        """The collection of the newest switch, or None before any switch."""
        with self._db.read() as conn:
            row = conn.execute("SELECT collection_id FROM collection_switches "
                               "ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def switches(self) -> tuple[CollectionSwitch, ...]:
        """Every switch, oldest first."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT collection_id, reason, at_ms FROM collection_switches "
                                "ORDER BY seq").fetchall()
        return tuple(CollectionSwitch(*row) for row in rows)

    # -- feature rows ------------------------------------------------------

    def write_rows(self, rows: Sequence[FeatureRow]) -> int:
        """Insert rows keyed by (collection, location, as_of); skip known keys; count written."""
        if not rows:
            return 0
        values = [(r.collection_id, r.location_id, r.as_of_ms, encode_values(r.values),
                   r.computed_at_ms) for r in rows]
        with self._db.write() as conn:
            before = conn.total_changes
            conn.executemany(f"INSERT INTO feature_rows ({_ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                             "ON CONFLICT DO NOTHING", values)
            return conn.total_changes - before

    def latest_row(self, collection_id: int, location_id: int) -> FeatureRow | None:
        """The location's row with the newest ``as_of_ms``, or None."""
        with self._db.read() as conn:
            row = conn.execute(f"SELECT {_ROW_COLUMNS} FROM feature_rows WHERE collection_id = ? "
                               "AND location_id = ? ORDER BY as_of_ms DESC LIMIT 1",
                               (collection_id, location_id)).fetchone()
        return None if row is None else _row(row)

    def latest_rows(self, collection_id: int) -> tuple[FeatureRow, ...]:
        """The newest row of every location in the collection, by location."""
        # SQLite takes the bare columns from the row that holds max(as_of_ms).
        with self._db.read() as conn:
            rows = conn.execute("SELECT collection_id, location_id, max(as_of_ms), vals, "
                                "computed_at_ms FROM feature_rows WHERE collection_id = ? "
                                "GROUP BY location_id ORDER BY location_id",
                                (collection_id,)).fetchall()
        return tuple(_row(row) for row in rows)

    def all_rows(self, collection_id: int) -> tuple[FeatureRow, ...]:
        """Every row of the collection, by location then ``as_of_ms`` (for ``rml migrate``;
        not in the protocol: a migration's source is an SQLite data directory)."""
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT {_ROW_COLUMNS} FROM feature_rows WHERE collection_id = ? "
                                "ORDER BY location_id, as_of_ms", (collection_id,)).fetchall()
        return tuple(_row(row) for row in rows)

    def row_as_of(self, collection_id: int, location_id: int, at_ms: int) -> FeatureRow | None:
        """The newest row with ``as_of_ms <= at_ms`` (point-in-time lookup), or None."""
        with self._db.read() as conn:
            row = conn.execute(f"SELECT {_ROW_COLUMNS} FROM feature_rows WHERE collection_id = ? "
                               "AND location_id = ? AND as_of_ms <= ? "
                               "ORDER BY as_of_ms DESC LIMIT 1",
                               (collection_id, location_id, at_ms)).fetchone()
        return None if row is None else _row(row)

    # -- consumers' fact cursors -------------------------------------------

    def cursor(self, name: str) -> FactCursor:
        """Consumer ``name``'s fact cursor (its newest row holds every one merged); empty
        if none. A data directory from before cursors kept an integer watermark over the
        facts file's rowids: that is the cursor until the consumer records one."""
        recorded = self._db.has_tables("cursors")  # a read-only older file may lack it
        with self._db.read() as conn:
            return self._cursor(conn, name, recorded)

    @staticmethod
    def _cursor(conn: sqlite3.Connection, name: str, recorded: bool = True) -> FactCursor:
        if recorded:
            row = conn.execute("SELECT cursor FROM cursors WHERE name = ? ORDER BY seq DESC "
                               "LIMIT 1", (name,)).fetchone()
            if row is not None:
                return FactCursor.from_text(row[0])
        old = conn.execute("SELECT max(value) FROM watermarks WHERE name = ?",
                           (name,)).fetchone()[0]
        return FactCursor() if old is None else FactCursor(((SQLITE_LOG, int(old), 0),))

    def advance_cursor(self, name: str, cursor: FactCursor, at_ms: int) -> None:
        """Merge ``cursor`` into ``name``'s; one the current one covers changes nothing."""
        with self._db.write() as conn:
            current = self._cursor(conn, name)
            if not current.covers(cursor):
                conn.execute("INSERT INTO cursors (name, cursor, at_ms) VALUES (?, ?, ?)",
                             (name, current.merge(cursor).to_text(), at_ms))
