"""``FactStore`` on an SQLite file: the rowid is the ingest sequence, one log for all writers.

Writers are serialised per file (``BEGIN IMMEDIATE``), so rowids are handed out
in commit order and no lower sequence number ever becomes visible after a
higher one: a cursor that keeps the last rowid read (as the position of the one
log, ``SQLITE_LOG``) misses nothing.
Duplicates are refused by a unique index (``ON CONFLICT DO NOTHING``) and
counted from the connection's change counter, exact even when many processes
insert the same keys at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from messages.facts import Outcome, Reading
from storage.facts import FactCounts, FactCursor, FactPage, InsertResult
from storage.sqlite.connection import Migration, SQLiteBacked

__all__ = ["SQLITE_LOG", "SQLiteFactStore"]

#: The name of an SQLite fact file's one log in a ``FactCursor``.
SQLITE_LOG = "sqlite"

# An estimate's bounds are real numbers: ANY (a STRICT table keeps each value's own type),
# so a whole bound stays the integer it was always stored as and 12.5 is kept exactly.
_READINGS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    seq INTEGER PRIMARY KEY,
    sensor_id TEXT NOT NULL,
    location_id INTEGER NOT NULL,
    reading_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    animals_lower ANY NOT NULL CHECK (typeof(animals_lower) IN ('integer', 'real')),
    animals_upper ANY NOT NULL CHECK (typeof(animals_upper) IN ('integer', 'real')),
    percent_zebras REAL NOT NULL,
    UNIQUE (sensor_id, reading_id)
) STRICT"""
_READINGS_INDEX = ("CREATE INDEX IF NOT EXISTS readings_by_location "
                   "ON readings (location_id, timestamp)")
_SCHEMA = _READINGS_TABLE.format(name="readings") + ";\n" + _READINGS_INDEX + """;
CREATE TABLE IF NOT EXISTS outcomes (
    seq INTEGER PRIMARY KEY,
    location_id INTEGER NOT NULL,
    outcome_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    label INTEGER NOT NULL CHECK (label IN (0, 1)),
    UNIQUE (location_id, outcome_id)
) STRICT;
"""

# Column order is the dataclass field order, so a row is ``Reading(*row)``.
_READING_COLUMNS = ("sensor_id, location_id, reading_id, timestamp, "
                    "animals_lower, animals_upper, percent_zebras")
_OUTCOME_COLUMNS = "location_id, outcome_id, timestamp, label"
_INSERT_READING = (f"INSERT INTO readings ({_READING_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT DO NOTHING")
_INSERT_OUTCOME = (f"INSERT INTO outcomes ({_OUTCOME_COLUMNS}) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT DO NOTHING")
_reading_values = attrgetter("sensor_id", "location_id", "reading_id", "timestamp",
                             "animals_lower", "animals_upper", "percent_zebras")
_outcome_values = attrgetter("location_id", "outcome_id", "timestamp", "label")


def _outcome(row: Sequence[object]) -> Outcome:
    location_id, outcome_id, timestamp, label = row
    return Outcome(location_id, outcome_id, timestamp, bool(label))  # type: ignore[arg-type]


#: Schema 1: the bounds were INTEGER columns (a STRICT table refused 12.5). The table is
#: rebuilt with every row and its seq (cursors stay valid); stored integers stay integers.
_REAL_BOUNDS = Migration(1, "readings: real-valued animal bounds", (
    _READINGS_TABLE.format(name="readings_v1"),
    "INSERT INTO readings_v1 SELECT seq, sensor_id, location_id, reading_id, timestamp, "
    "animals_lower, animals_upper, percent_zebras FROM readings",
    "DROP TABLE readings",
    "ALTER TABLE readings_v1 RENAME TO readings",
    _READINGS_INDEX,
))


class SQLiteFactStore(SQLiteBacked):
    """Readings and outcomes in one SQLite file (WAL, durable commits, insert-only)."""

    SCHEMA = _SCHEMA
    MIGRATIONS = (_REAL_BOUNDS,)

    def _insert(self, sql: str, values: object, n: int) -> InsertResult:
        if n == 0:
            return InsertResult(0, 0)
        with self._db.write() as conn:
            before = conn.total_changes
            conn.executemany(sql, values)  # type: ignore[arg-type]
            accepted = conn.total_changes - before
        return InsertResult(accepted, n - accepted)

    def insert_readings(self, readings: Sequence[Reading]) -> InsertResult:
        """Store a batch in one durable transaction; known keys count as duplicates."""
        return self._insert(_INSERT_READING, map(_reading_values, readings), len(readings))

    def insert_outcomes(self, outcomes: Sequence[Outcome]) -> InsertResult:
        """Store a batch in one durable transaction; known keys count as duplicates."""
        return self._insert(_INSERT_OUTCOME, map(_outcome_values, outcomes), len(outcomes))

    def _since(self, table: str, columns: str, cursor: FactCursor,
               limit: int) -> tuple[list[tuple[object, ...]], FactCursor]:
        after = cursor.position(SQLITE_LOG)[0]
        if limit <= 0:
            return [], cursor
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT seq, {columns} FROM {table} WHERE seq > ? "
                                "ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return rows, (cursor.at(SQLITE_LOG, rows[-1][0]) if rows else cursor)

    def readings_since(self, cursor: FactCursor, limit: int) -> FactPage[Reading]:
        """Up to ``limit`` readings past ``cursor``, in rowid order, and the cursor after them."""
        rows, after = self._since("readings", _READING_COLUMNS, cursor, limit)
        return FactPage(tuple(Reading(*row[1:]) for row in rows), after)  # type: ignore[arg-type]

    def outcomes_since(self, cursor: FactCursor, limit: int) -> FactPage[Outcome]:
        """Up to ``limit`` outcomes past ``cursor``, in rowid order, and the cursor after them."""
        rows, after = self._since("outcomes", _OUTCOME_COLUMNS, cursor, limit)
        return FactPage(tuple(_outcome(row[1:]) for row in rows), after)

    def readings_for_location(self, location_id: int, start_ms: int,
                              end_ms: int) -> tuple[Reading, ...]:
        """A location's readings in ``[start_ms, end_ms)``, ascending timestamp (then seq)."""
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {_READING_COLUMNS} FROM readings WHERE location_id = ? "
                "AND timestamp >= ? AND timestamp < ? ORDER BY timestamp, seq",
                (location_id, start_ms, end_ms)).fetchall()
        return tuple(Reading(*row) for row in rows)

    def all_readings(self) -> tuple[Reading, ...]:
        """Every reading, ascending seq."""
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT {_READING_COLUMNS} FROM readings ORDER BY seq").fetchall()
        return tuple(Reading(*row) for row in rows)

    def all_outcomes(self) -> tuple[Outcome, ...]:
        """Every outcome, ascending seq."""
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT {_OUTCOME_COLUMNS} FROM outcomes ORDER BY seq").fetchall()
        return tuple(_outcome(row) for row in rows)

    def get_reading(self, sensor_id: str, reading_id: str) -> Reading | None:
        """The reading stored under ``(sensor_id, reading_id)``, or None."""
        with self._db.read() as conn:
            row = conn.execute(f"SELECT {_READING_COLUMNS} FROM readings "
                               "WHERE sensor_id = ? AND reading_id = ?",
                               (sensor_id, reading_id)).fetchone()
        return None if row is None else Reading(*row)

    def get_outcome(self, location_id: int, outcome_id: str) -> Outcome | None:
        """The outcome stored under ``(location_id, outcome_id)``, or None."""
        with self._db.read() as conn:
            row = conn.execute(f"SELECT {_OUTCOME_COLUMNS} FROM outcomes "
                               "WHERE location_id = ? AND outcome_id = ?",
                               (location_id, outcome_id)).fetchone()
        return None if row is None else _outcome(row)

    def counts(self) -> FactCounts:
        """Fact counts from one snapshot (``count`` scans an index: not hot-path)."""
        with self._db.read() as conn:
            row = conn.execute("SELECT (SELECT count(*) FROM readings), "
                               "(SELECT count(*) FROM outcomes)").fetchone()
        return FactCounts(*row)
