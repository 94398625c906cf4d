"""The drift log on SQLite, in its own file (``drift.sqlite``): the learner is its only writer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from storage.records import DriftCheck
from storage.sqlite.connection import SQLiteBacked

__all__ = ["SQLiteDriftLog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS drift_checks (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    champion_version INTEGER NOT NULL,
    collection_id INTEGER NOT NULL,
    window_start_ms INTEGER NOT NULL,
    window_end_ms INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    scores TEXT NOT NULL,
    threshold REAL NOT NULL,
    episode_started_at_ms INTEGER
) STRICT;
"""

_CHECK_COLUMNS = ("at_ms, champion_version, collection_id, window_start_ms, window_end_ms, "
                  "rows, scores, threshold, episode_started_at_ms")


def _check(row: Sequence[Any]) -> DriftCheck:
    at, version, collection, start, end, rows, scores, threshold, episode = row
    pairs = tuple((str(name), float(score)) for name, score in json.loads(scores))
    return DriftCheck(at, version, collection, start, end, rows, pairs, threshold, episode)


class SQLiteDriftLog(SQLiteBacked):
    """The drift log on an SQLite file."""

    SCHEMA = _SCHEMA

    def record_check(self, check: DriftCheck) -> None:
        """Append a drift check."""
        with self._db.write() as conn:
            conn.execute(f"INSERT INTO drift_checks ({_CHECK_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (check.at_ms, check.champion_version, check.collection_id,
                          check.window_start_ms, check.window_end_ms, check.rows,
                          json.dumps([list(pair) for pair in check.scores]), check.threshold,
                          check.episode_started_at_ms))

    def latest_check(self) -> DriftCheck | None:
        """The newest drift check, or None."""
        with self._db.read() as conn:
            row = conn.execute(f"SELECT {_CHECK_COLUMNS} FROM drift_checks "
                               "ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else _check(row)
