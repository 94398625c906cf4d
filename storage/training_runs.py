"""The training log: every fit the learner attempted, where, and how it ended.

An external trainer can be slow or broken; when it is, the champion stays and nothing in
the registry changes, so this append-only table (in the system database) is where the
attempt is remembered: its correlation id, the trainer (``local`` or its URL), the outcome
(``ok``, ``timeout``, ``failed``), the error, how long it took, and the version it gave.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage._sqlite import SQLiteBacked

__all__ = ["OUTCOMES", "SQLiteTrainingLog", "TrainingAttempt"]

#: How an attempt can end.
OUTCOMES = ("ok", "timeout", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS training_attempts (
    seq INTEGER PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    trainer TEXT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT NOT NULL,
    seconds REAL NOT NULL,
    at_ms INTEGER NOT NULL,
    version INTEGER
) STRICT;
"""

_COLUMNS = "correlation_id, trainer, outcome, error, seconds, at_ms, version"


@dataclass(frozen=True, slots=True)
class TrainingAttempt:
    """One fit attempt; ``version`` is the model it registered (``ok`` only)."""

    correlation_id: str
    trainer: str  # "local" or the external trainer's URL
    outcome: str  # one of OUTCOMES
    error: str
    seconds: float
    at_ms: int
    version: int | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, "
                             f"got {self.outcome!r}")


class SQLiteTrainingLog(SQLiteBacked):
    """Training attempts in an SQLite file (the system database), append-only."""

    SCHEMA = _SCHEMA

    def record(self, attempt: TrainingAttempt) -> None:
        """Append ``attempt`` (durably committed on return)."""
        with self._db.write() as conn:
            conn.execute(f"INSERT INTO training_attempts ({_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (attempt.correlation_id, attempt.trainer, attempt.outcome,
                          attempt.error, float(attempt.seconds), attempt.at_ms,
                          attempt.version))

    def attempts(self, limit: int = 100) -> tuple[TrainingAttempt, ...]:
        """The newest attempts, newest first."""
        if limit <= 0:
            return ()
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM training_attempts "
                                "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return tuple(TrainingAttempt(*row) for row in rows)
