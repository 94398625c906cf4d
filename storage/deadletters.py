"""Dead letters: messages an actor could not handle (Thespian's ``PoisonMessage``), kept.

A poison message is never silently dropped: the supervisor records what it was,
who failed on it and why, and ``status`` can show the newest ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from storage._sqlite import SQLiteBacked

__all__ = ["MAX_MESSAGE_CHARS", "DeadLetter", "DeadLetterStore", "SQLiteDeadLetters"]

#: A dead letter keeps this much of the message's repr; a huge batch is not worth keeping whole.
MAX_MESSAGE_CHARS = 2000

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


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message an actor failed on: when, which actor, the message (repr, truncated), why."""

    at_ms: int
    actor: str
    message_type: str
    message: str
    error: str


class DeadLetterStore(Protocol):
    """An append-only log of dead letters."""

    def record(self, *, at_ms: int, actor: str, message: object, error: object,
               message_type: str | None = None) -> DeadLetter:
        """Append a dead letter for ``message`` and return what was stored."""
        ...

    def list(self, limit: int = 100) -> tuple[DeadLetter, ...]:
        """The newest dead letters, newest first."""
        ...

    def count(self) -> int:
        """How many dead letters were ever recorded."""
        ...

    def close(self) -> None:
        """Release the backend's connection; idempotent."""
        ...


def dead_letter(*, at_ms: int, actor: str, message: object, error: object,
                message_type: str | None = None) -> DeadLetter:
    """The record kept for ``message``: its repr truncated, the error as text."""
    text = message if isinstance(message, str) else repr(message)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    return DeadLetter(at_ms, actor, message_type or type(message).__name__, text, str(error))


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
