"""Dead letters on SQLite, in the system database (``system.sqlite``)."""

from __future__ import annotations

from storage.deadletters import DeadLetter, dead_letter
from storage.sqlite.connection import SQLiteBacked

__all__ = ["SQLiteDeadLetters"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    message_type TEXT NOT NULL,
    message TEXT NOT NULL,
    error TEXT NOT NULL
) STRICT;
"""


class SQLiteDeadLetters(SQLiteBacked):
    """Dead letters in an SQLite file (the system database)."""

    SCHEMA = _SCHEMA

    def record(self, *, at_ms: int, actor: str, message: object, error: object,
               message_type: str | None = None) -> DeadLetter:
        """Append a dead letter for ``message`` and return what was stored."""
        letter = dead_letter(at_ms=at_ms, actor=actor, message=message, error=error,
                             message_type=message_type)
        with self._db.write() as conn:
            conn.execute("INSERT INTO dead_letters (at_ms, actor, message_type, message, error) "
                         "VALUES (?, ?, ?, ?, ?)", (letter.at_ms, letter.actor,
                                                    letter.message_type, letter.message,
                                                    letter.error))
        return letter

    def list(self, limit: int = 100) -> tuple[DeadLetter, ...]:
        """The newest dead letters, newest first."""
        if limit <= 0:
            return ()
        with self._db.read() as conn:
            rows = conn.execute("SELECT at_ms, actor, message_type, message, error "
                                "FROM dead_letters ORDER BY seq DESC LIMIT ?",
                                (limit,)).fetchall()
        return tuple(DeadLetter(*row) for row in rows)

    def count(self) -> int:
        """How many dead letters were ever recorded."""
        with self._db.read() as conn:
            return int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
