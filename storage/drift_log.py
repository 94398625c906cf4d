"""The drift log: every drift check's scores, kept.

The learner is its only writer (its own SQLite file, ``drift.sqlite``); ``rml status``
reads the newest check from it, never from the actor. A restarted learner reads back the
newest check, and so the drift episode it is in. Training runs, with their triggers, are in
``storage.training_runs``.
"""

from __future__ import annotations

from typing import Protocol

from storage.records import DriftCheck

__all__ = ["DRIFT_FILE", "DriftLog"]

DRIFT_FILE = "drift.sqlite"


class DriftLog(Protocol):
    """Append-only drift checks."""

    def record_check(self, check: DriftCheck) -> None:
        """Append a drift check."""
        ...

    def latest_check(self) -> DriftCheck | None:
        """The newest drift check, or None."""
        ...

    def close(self) -> None:
        """Release the backend's connection; idempotent."""
        ...


def __getattr__(name: str) -> object:
    """``SQLiteDriftLog`` moved to ``storage.sqlite.drift_log``; this name keeps working."""
    if name == "SQLiteDriftLog":
        from storage.sqlite.drift_log import SQLiteDriftLog
        return SQLiteDriftLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
