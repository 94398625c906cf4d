"""The training runs on SQLite, in the system database (``system.sqlite``): one append-only
table, ``training_runs``, one row per run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from storage.records import Trigger
from storage.sqlite.connection import SQLiteBacked
from storage.training_runs import REGISTERED, TrainingRun, failures_at_head

__all__ = ["SQLiteTrainingRuns"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS training_runs (
    seq INTEGER PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    trainer TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT NOT NULL,
    seconds REAL NOT NULL,
    version INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS training_runs_by_kind ON training_runs (kind, outcome);
CREATE INDEX IF NOT EXISTS training_runs_by_version ON training_runs (version);
"""

_COLUMNS = ("correlation_id, started_at_ms, kind, reason, detail, trainer, outcome, error, "
            "seconds, version")


def _run(row: Sequence[Any]) -> TrainingRun:
    correlation_id, started, kind, reason, detail, trainer, outcome, error, seconds, version = row
    return TrainingRun(correlation_id, started, Trigger(kind, reason, json.loads(detail)),
                       trainer, outcome, error, seconds, version)


class SQLiteTrainingRuns(SQLiteBacked):
    """The training runs on an SQLite file (the system database)."""

    SCHEMA = _SCHEMA

    def record(self, run: TrainingRun) -> None:
        """Append ``run`` (durable on return)."""
        detail = {k: v for k, v in run.trigger.to_mapping().items() if k not in ("kind", "reason")}
        with self._db.write() as conn:
            conn.execute(f"INSERT INTO training_runs ({_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (run.correlation_id, run.started_at_ms, run.trigger.kind,
                          run.trigger.reason, json.dumps(detail, sort_keys=True), run.trainer,
                          run.outcome, run.error, float(run.seconds), run.version))

    def runs(self, limit: int = 100) -> tuple[TrainingRun, ...]:
        """The newest runs, newest first."""
        if limit <= 0:
            return ()
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM training_runs "
                                "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return tuple(_run(row) for row in rows)

    def retrained_in_episode(self, champion_version: int, episode_started_at_ms: int) -> bool:
        """Whether a drift run registered a version in this champion's drift episode (a run
        that timed out or failed leaves the episode free to retrain)."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT 1 FROM training_runs WHERE kind = 'drift' AND outcome = ? "
                "AND json_extract(detail, '$.champion_version') = ? "
                "AND json_extract(detail, '$.episode_started_at_ms') = ? LIMIT 1",
                (REGISTERED, champion_version, episode_started_at_ms)).fetchone()
        return row is not None

    def run_of(self, version: int) -> TrainingRun | None:
        """The run that registered ``version``, or None."""
        with self._db.read() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM training_runs WHERE version = ? "
                               "ORDER BY seq DESC LIMIT 1", (version,)).fetchone()
        return None if row is None else _run(row)

    def failures_in_a_row(self, trainer: str, limit: int = 64) -> tuple[TrainingRun, ...]:
        """The newest runs through ``trainer`` that timed out or failed, up to the newest run
        that did not (or went through another trainer); newest first, at most ``limit``."""
        return failures_at_head(self.runs(limit), trainer)
