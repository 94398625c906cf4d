"""The ``ModelRegistry`` boundary: numbered model versions, their status log and champion.

A model's record (job, metrics, lineage, artifact hash) never changes once
registered; its status and the champion are append-only logs whose newest row
is the current value, so the history of every promotion stays readable. The
artifact is stored beside its sha256 and checked on every read: a tampered
artifact is refused, never returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "CANDIDATE", "CHAMPION", "REJECTED", "RETIRED", "SHADOW", "STATUSES",
    "ChampionChange", "ModelRecord", "ModelRegistry", "StatusChange",
]

CANDIDATE = "candidate"
CHAMPION = "champion"
REJECTED = "rejected"
RETIRED = "retired"
SHADOW = "shadow"  # passed the gate; serving in shadow (answers logged, not returned)
STATUSES = frozenset({CANDIDATE, CHAMPION, REJECTED, RETIRED, SHADOW})


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A registered model: what it was trained on and how, how well, and its current status."""

    version: int
    created_at_ms: int
    status: str
    feature_collection_id: int
    job: str  # JSON text
    metrics: tuple[tuple[str, float], ...]
    lineage: str  # JSON text
    artifact_sha256: str
    status_reason: str
    # JSON text: holdout ROC and precision-recall curves, holdout size and the training
    # feature profile (see learning.training.candidate.evaluation_record); "{}" for older models.
    evaluation: str = "{}"

    @property
    def metrics_map(self) -> dict[str, float]:
        """The metrics as a fresh dict (the record itself stays immutable)."""
        return dict(self.metrics)


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One row of a model's status log."""

    version: int
    status: str
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class ChampionChange:
    """One promotion: the new champion, the one it replaced (if any), why and when."""

    version: int
    previous_version: int | None
    reason: str
    at_ms: int


class ModelRegistry(Protocol):
    """Versioned models with verified artifacts, an append-only status log and champion history."""

    def register(self, *, feature_collection_id: int, job: Mapping[str, Any],
                 metrics: Mapping[str, float], lineage: Mapping[str, Any], artifact: bytes,
                 created_at_ms: int, status: str = CANDIDATE,
                 evaluation: Mapping[str, Any] | None = None,
                 compiled: bytes | None = None) -> int:
        """Store a new model (numbered 1, 2, 3, ...) with its artifact, evaluation record
        and compiled form (if it has one); return its version."""
        ...

    def set_status(self, version: int, status: str, reason: str, at_ms: int) -> None:
        """Append a status; ``champion`` means ``promote``; the same status again is a no-op."""
        ...

    def promote(self, version: int, reason: str, at_ms: int) -> None:
        """Make ``version`` champion and retire the previous one; a no-op if it already is."""
        ...

    def champion(self) -> ModelRecord | None:
        """The current champion, or None."""
        ...

    def champion_history(self) -> tuple[ChampionChange, ...]:
        """Every promotion, oldest first."""
        ...

    def status_history(self, version: int) -> tuple[StatusChange, ...]:
        """A model's status log, oldest first (``KeyError`` if unknown)."""
        ...

    def get(self, version: int) -> ModelRecord:
        """The model's record (``KeyError`` if unknown)."""
        ...

    def versions(self) -> tuple[ModelRecord, ...]:
        """Every model, by version."""
        ...

    def artifact(self, version: int) -> bytes:
        """The artifact, verified against its sha256 (``StoreError`` if it fails)."""
        ...

    def add_compiled_form(self, version: int, compiled: bytes) -> None:
        """Give a version registered without a compiled form one; a no-op if it has one."""
        ...

    def compiled_form(self, version: int) -> bytes | None:
        """The compiled form (``learning.serving.compiled``), verified against its sha256
        (``StoreError`` if it fails); None for a version registered without one."""
        ...

    def champion_for_collection(self, collection_id: int) -> ModelRecord | None:
        """The newest champion-or-retired model trained on ``collection_id`` (for fallback)."""
        ...

    def close(self) -> None:
        """Release the backend's connection; idempotent."""
        ...
