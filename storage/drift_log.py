"""The drift log: every drift check's scores, and every training run's trigger, kept.

The learner is its only writer (its own SQLite file, ``drift.sqlite``); ``rml status``
reads the newest check and trigger from it, never from the actor. A restarted learner
reads back from it whether the current drift episode already retrained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from learning.triggers import DriftCheck, Trigger
from storage._sqlite import SQLiteBacked

__all__ = ["DRIFT_FILE", "DriftLog", "SQLiteDriftLog", "TriggerRecord"]

DRIFT_FILE = "drift.sqlite"

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
CREATE TABLE IF NOT EXISTS triggers (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    correlation_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS triggers_by_kind ON triggers (kind, seq);
"""

_CHECK_COLUMNS = ("at_ms, champion_version, collection_id, window_start_ms, window_end_ms, "
                  "rows, scores, threshold, episode_started_at_ms")


@dataclass(frozen=True, slots=True)
class TriggerRecord:
    """A training run's trigger as logged: when, which run (correlation id) and why."""

    at_ms: int
    correlation_id: str
    trigger: Trigger


class DriftLog(Protocol):
    """Append-only drift checks and training triggers."""

    def record_check(self, check: DriftCheck) -> None:
        """Append a drift check."""
        ...

    def latest_check(self) -> DriftCheck | None:
        """The newest drift check, or None."""
        ...

    def record_trigger(self, record: TriggerRecord) -> None:
        """Append a training run's trigger."""
        ...

    def triggers(self, limit: int = 100) -> tuple[TriggerRecord, ...]:
        """The newest triggers, newest first."""
        ...

    def retrained_in_episode(self, champion_version: int, episode_started_at_ms: int) -> bool:
        """Whether a drift trigger was logged for this champion's episode."""
        ...

    def close(self) -> None:
        """Release the backend's connection; idempotent."""
        ...


def _check(row: Sequence[Any]) -> DriftCheck:
    at, version, collection, start, end, rows, scores, threshold, episode = row
    pairs = tuple((str(name), float(score)) for name, score in json.loads(scores))
    return DriftCheck(at, version, collection, start, end, rows, pairs, threshold, episode)


def _trigger(row: Sequence[Any]) -> TriggerRecord:
    at, correlation_id, kind, reason, detail = row
    return TriggerRecord(at, correlation_id, Trigger(kind, reason, json.loads(detail)))


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

    def record_trigger(self, record: TriggerRecord) -> None:
        """Append a training run's trigger."""
        detail = {k: v for k, v in record.trigger.to_mapping().items()
                  if k not in ("kind", "reason")}
        with self._db.write() as conn:
            conn.execute("INSERT INTO triggers (at_ms, correlation_id, kind, reason, detail) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (record.at_ms, record.correlation_id, record.trigger.kind,
                          record.trigger.reason, json.dumps(detail, sort_keys=True)))

    def triggers(self, limit: int = 100) -> tuple[TriggerRecord, ...]:
        """The newest triggers, newest first."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT at_ms, correlation_id, kind, reason, detail "
                                "FROM triggers ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return tuple(_trigger(row) for row in rows)

    def retrained_in_episode(self, champion_version: int, episode_started_at_ms: int) -> bool:
        """Whether a drift trigger was logged for this champion's episode."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT detail FROM triggers WHERE kind = 'drift'").fetchall()
        for (detail,) in rows:
            data = json.loads(detail)
            if (data.get("champion_version") == champion_version
                    and data.get("episode_started_at_ms") == episode_started_at_ms):
                return True
        return False
