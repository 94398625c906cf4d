"""Dead letters: messages an actor could not handle (Thespian's ``PoisonMessage``), kept.

A poison message is never silently dropped: the supervisor records what it was,
who failed on it and why, and ``status`` can show the newest ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["MAX_MESSAGE_CHARS", "DeadLetter", "DeadLetterStore"]

#: A dead letter keeps this much of the message's repr; a huge batch is not worth keeping whole.
MAX_MESSAGE_CHARS = 2000


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


def __getattr__(name: str) -> object:
    """``SQLiteDeadLetters`` moved to ``storage.sqlite.deadletters``; this name keeps working."""
    if name == "SQLiteDeadLetters":
        from storage.sqlite.deadletters import SQLiteDeadLetters
        return SQLiteDeadLetters
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
