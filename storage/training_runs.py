"""The training runs: every run the learner started, why, where it fitted, how it ended.

One append-only table, ``training_runs`` in the system database, one row per run, written
when the run ends (before anyone is told the result): its correlation id, when it started,
its trigger (kind, reason and details, as in the model's lineage), the trainer (``local``
or the external trainer's URL), the outcome (one of ``RUN_OUTCOMES``) with its error, how
long it took, and the version it registered. The learner is its only writer; it reads back
from it whether a drift episode already retrained and whether a failing external trainer
is still in its backoff; ``rml status`` shows the newest run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from storage.records import Trigger

__all__ = [
    "FAILED", "REGISTERED", "RUN_OUTCOMES", "SKIPPED", "TIMEOUT",
    "TrainingRun", "TrainingRuns", "failures_at_head",
]

REGISTERED = "registered"  # a candidate version is in the registry (the publisher judges it)
SKIPPED = "skipped"  # the facts cannot train a model yet (too few rows, a single class)
TIMEOUT = "timeout"  # the external trainer gave no answer within trainer_timeout_s
FAILED = "failed"  # anything else: the trainer failed, a feature crashed, an error in the run
#: How a run can end.
RUN_OUTCOMES = (REGISTERED, SKIPPED, TIMEOUT, FAILED)


@dataclass(frozen=True, slots=True)
class TrainingRun:
    """One training run: which (correlation id), when it started, why, where it fitted and
    how it ended; ``seconds`` is the whole run, ``version`` the one it registered."""

    correlation_id: str
    started_at_ms: int
    trigger: Trigger
    trainer: str  # "local" or the external trainer's URL
    outcome: str  # one of RUN_OUTCOMES
    error: str = ""
    seconds: float = 0.0
    version: int | None = None

    def __post_init__(self) -> None:
        if self.outcome not in RUN_OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(RUN_OUTCOMES)}, "
                             f"got {self.outcome!r}")
        if (self.version is not None) != (self.outcome == REGISTERED):
            raise ValueError(f"a {self.outcome} run {'has no' if self.version else 'needs a'} "
                             "version")

    @property
    def ended_at_ms(self) -> int:
        """When the run ended."""
        return self.started_at_ms + round(self.seconds * 1000)

    def to_mapping(self) -> dict[str, Any]:
        """The form the views show (``rml status``, ``rml models``): every field, the trigger
        in its lineage form (``Trigger.to_mapping``)."""
        return {"correlation_id": self.correlation_id, "started_at_ms": self.started_at_ms,
                "trigger": self.trigger.to_mapping(), "trainer": self.trainer,
                "outcome": self.outcome, "error": self.error, "seconds": self.seconds,
                "version": self.version}


class TrainingRuns(Protocol):
    """An append-only log of training runs."""

    def record(self, run: TrainingRun) -> None:
        """Append ``run`` (durable on return)."""
        ...

    def runs(self, limit: int = 100) -> tuple[TrainingRun, ...]:
        """The newest runs, newest first."""
        ...

    def retrained_in_episode(self, champion_version: int, episode_started_at_ms: int) -> bool:
        """Whether a drift run registered a version in this champion's drift episode."""
        ...

    def failures_in_a_row(self, trainer: str) -> tuple[TrainingRun, ...]:
        """The newest runs through ``trainer`` that timed out or failed, up to the newest run
        that did not (or went through another trainer); newest first."""
        ...

    def run_of(self, version: int) -> TrainingRun | None:
        """The run that registered ``version``, or None."""
        ...

    def close(self) -> None:
        """Release the backend's connection; idempotent."""
        ...


def failures_at_head(newest_first: Iterable[TrainingRun],
                     trainer: str) -> tuple[TrainingRun, ...]:
    """Of runs newest first: those through ``trainer`` that timed out or failed, up to the
    first that did not (or went through another trainer)."""
    failures = []
    for run in newest_first:
        if run.trainer != trainer or run.outcome not in (TIMEOUT, FAILED):
            break
        failures.append(run)
    return tuple(failures)


def __getattr__(name: str) -> object:
    """``SQLiteTrainingRuns`` moved to ``storage.sqlite.training_runs``; this name keeps working."""
    if name == "SQLiteTrainingRuns":
        from storage.sqlite.training_runs import SQLiteTrainingRuns
        return SQLiteTrainingRuns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
