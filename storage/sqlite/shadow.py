"""``ShadowTrials`` on SQLite, in the registry's file (``models.sqlite``) beside the models.

Counts are upserted per (version, reporter) keeping the largest value of each, so a report
applied twice (Thespian redelivers a message whose handler failed) is a no-op.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from storage.shadow import ShadowCounts, ShadowTrial
from storage.sqlite.connection import SQLiteBacked

__all__ = ["SQLiteShadowTrials"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shadow_trials (
    version INTEGER PRIMARY KEY,
    target INTEGER NOT NULL CHECK (target > 0),
    started_at_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS shadow_counts (
    version INTEGER NOT NULL,
    reporter TEXT NOT NULL,
    served INTEGER NOT NULL,
    agreed INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (version, reporter)
) STRICT;
"""

_TRIALS = """
SELECT t.version, t.target, t.started_at_ms, coalesce(sum(c.served), 0),
       coalesce(sum(c.agreed), 0), coalesce(sum(c.errors), 0),
       coalesce(max(c.at_ms), t.started_at_ms)
FROM shadow_trials AS t LEFT JOIN shadow_counts AS c USING (version)
"""


def _trial(row: tuple[Any, ...]) -> ShadowTrial:
    version, target, started, served, agreed, errors, updated = row
    return ShadowTrial(int(version), int(target), int(started),
                       ShadowCounts(int(served), int(agreed), int(errors)), int(updated))


def _select(conn: sqlite3.Connection, version: int | None) -> list[ShadowTrial]:
    if version is None:
        rows = conn.execute(f"{_TRIALS} GROUP BY t.version ORDER BY t.version").fetchall()
    else:
        rows = conn.execute(f"{_TRIALS} WHERE t.version = ? GROUP BY t.version",
                            (version,)).fetchall()
    return [_trial(row) for row in rows]


class SQLiteShadowTrials(SQLiteBacked):
    """Shadow trials and their per-reporter counts, in the registry's SQLite file."""

    SCHEMA = _SCHEMA

    def _has_tables(self) -> bool:
        # A read-only open of a registry written before shadow trials existed has no tables
        # (yet: a writable open elsewhere may make them): it simply has no trials.
        return self._db.has_tables("shadow_trials", "shadow_counts")

    def start(self, version: int, target: int, at_ms: int) -> ShadowTrial:
        """Begin ``version``'s trial (idempotent: a trial already begun is returned as is)."""
        if target < 1:
            raise ValueError(f"a shadow trial needs a target of at least 1 request, got {target}")
        with self._db.write() as conn:
            conn.execute("INSERT OR IGNORE INTO shadow_trials (version, target, started_at_ms) "
                         "VALUES (?, ?, ?)", (version, target, at_ms))
            return _select(conn, version)[0]

    def record(self, version: int, reporter: str, counts: ShadowCounts,
               at_ms: int) -> ShadowTrial:
        """Keep ``reporter``'s cumulative counts (the largest seen); the trial's new totals.
        ``KeyError`` if ``version`` has no trial."""
        with self._db.write() as conn:
            if conn.execute("SELECT 1 FROM shadow_trials WHERE version = ?",
                            (version,)).fetchone() is None:
                raise KeyError(f"model version {version} has no shadow trial")
            conn.execute(
                "INSERT INTO shadow_counts (version, reporter, served, agreed, errors, at_ms) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version, reporter) DO UPDATE SET "
                "served = max(served, excluded.served), agreed = max(agreed, excluded.agreed), "
                "errors = max(errors, excluded.errors), at_ms = max(at_ms, excluded.at_ms)",
                (version, reporter, counts.served, counts.agreed, counts.errors, at_ms))
            return _select(conn, version)[0]

    def get(self, version: int) -> ShadowTrial | None:
        """``version``'s trial, or None."""
        if not self._has_tables():
            return None
        with self._db.read() as conn:
            found = _select(conn, version)
        return found[0] if found else None

    def trials(self) -> tuple[ShadowTrial, ...]:
        """Every trial, by version."""
        if not self._has_tables():
            return ()
        with self._db.read() as conn:
            return tuple(_select(conn, None))
